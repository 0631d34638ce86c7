"""Every Prometheus metric of a streamscore worker, in one explicit registry.

Why one module: names, units and labels are decided once
(``streamscore_<subsystem>_<name>_<unit>``, base units, counters without
``_total`` in code), each worker owns its :class:`Metrics` (and so its
``CollectorRegistry``), and tests build their own. Hot-path code increments
per micro-batch, not per event.

Three kinds of figures:

* **pushed** by the batch handler (counters and histograms, per batch);
* **read at scrape time** from the worker once :meth:`Metrics.bind` has been
  called with its batch handler: consumer lag per partition
  (``streamscore_consumer_lag_records``) and the size of the RocksDB state per
  partition (``streamscore_state_estimated_keys``). Nothing is computed
  between scrapes and nothing is stale: a revoked partition disappears;
* **process**: ``process_*`` (CPU, RSS, open fds; Linux ``/proc``),
  ``python_info`` and ``python_gc_*``, and ``streamscore_build_info``
  (pipeline and version, value 1);
* **GPU**, read at scrape time by :class:`GPUCollector` only when the worker
  itself imported torch and CUDA is available: memory allocated and reserved
  by torch's caching allocator per device. Otherwise nothing at all is exposed
  (and torch is never imported for it).

Labelled series that alerts and dashboards rely on are created at zero up
front (every dlq reason, both input topics, every label outcome; once bound,
the champion model, every model's drifts, every torch model's checkpoint swaps
and every rule's hits), so ``rate()`` sees the first bad record of a worker's life
and "no predictions" is a zero, not a missing series.

Several workers on one host: each process serves its own ``/metrics`` and
needs its own port (``STREAMSCORE_METRICS_PORT`` / ``--metrics-port``, default
9464; and its own ``STREAMSCORE_WEB_PORT``). In containers every worker is its
own network host, so all keep 9464 (see ``docker-compose.yml`` and
``monitoring/README.md``).

>>> m = Metrics()
>>> m.events_in.labels(topic="events").inc(3)
>>> m.value("streamscore_worker_events_in_total", topic="events")
3.0
>>> m.value("streamscore_worker_dlq_total", reason="malformed_json")
0.0
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.schemas import Reason

#: Sub-millisecond to 10 s, for processing and end-to-end latencies.
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                     0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

#: Label values created at zero so that alerts see the first increment.
INPUT_TOPICS = ("events", "labels")
LABEL_OUTCOMES = ("joined", "pending", "duplicate", "timed_out", "late")

LAG_METRIC = "streamscore_consumer_lag_records"
STATE_KEYS_METRIC = "streamscore_state_estimated_keys"
GPU_ALLOCATED_METRIC = "streamscore_gpu_memory_allocated_bytes"
GPU_RESERVED_METRIC = "streamscore_gpu_memory_reserved_bytes"
#: Exposed only by a worker that uses CUDA (see :class:`GPUCollector`).
GPU_METRICS = (GPU_ALLOCATED_METRIC, GPU_RESERVED_METRIC)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("streamscore")
    except Exception:  # noqa: BLE001  # pragma: no cover - running from a bare source tree
        return "unknown"


class WorkerCollector(Collector):
    """Scrape-time figures of a bound batch handler (duck-typed).

    The handler needs ``lag``: ``{(logical topic, partition): records}`` and
    ``processors``: ``{partition: obj}`` where ``obj.store.estimate_keys()``
    returns RocksDB's key estimate. Only partitions that currently have a
    processor are reported, so a revoked partition's last lag does not linger.
    Before :meth:`Metrics.bind` (or with nothing assigned) the families are
    exposed with no samples.
    """

    def __init__(self) -> None:
        self.scorer: Any = None

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(LAG_METRIC, "Records between the last consumed offset and the fetch high watermark, "
                                          "per logical topic and partition (read at scrape time).",
                              labels=["topic", "partition"]),
            GaugeMetricFamily(STATE_KEYS_METRIC, "RocksDB estimate of the keys in the state store of a partition "
                                                 "(rocksdb.estimate-num-keys, read at scrape time).",
                              labels=["partition"]),
        ]

    def collect(self) -> Iterator[Metric]:
        lag, keys = self._families()
        scorer = self.scorer
        if scorer is not None:
            # dict() / list() copies are single C calls under the GIL: safe against the event loop thread
            processors = dict(getattr(scorer, "processors", None) or {})
            for (topic, partition), value in sorted(dict(getattr(scorer, "lag", None) or {}).items()):
                if partition in processors:
                    lag.add_metric([str(topic), str(partition)], float(value))
            for partition, proc in sorted(processors.items()):
                store = getattr(proc, "store", None)
                try:
                    n = store.estimate_keys() if store is not None else None
                except Exception:  # noqa: BLE001 - a store closed under our feet: skip it this scrape
                    n = None
                if n is not None:
                    keys.add_metric([str(partition)], float(n))
        yield lag
        yield keys


class GPUCollector(Collector):
    """Scrape-time GPU memory of this process: torch's caching allocator, per CUDA device.

    Reports only when torch is *already* imported by the worker (``sys.modules``;
    this collector never imports it: a River-only worker must not pay seconds
    of torch import, nor get a CUDA context, for a scrape) and
    ``torch.cuda.is_available()``. Then, for every visible device ``cuda:N``:
    ``streamscore_gpu_memory_allocated_bytes`` (live tensors) and
    ``streamscore_gpu_memory_reserved_bytes`` (held by the allocator, the
    figure ``nvidia-smi`` shows minus the context). Before the process first
    touches CUDA both read 0 (torch reports nothing without a CUDA context, and
    none is created here). Without torch or CUDA the collector yields nothing,
    so no empty families appear on a CPU worker's ``/metrics``. Any error in
    torch skips the scrape's GPU figures rather than failing the scrape.
    """

    def describe(self) -> Iterable[Metric]:
        return self._families()    # reserves the names in the registry; collect() may yield none

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(GPU_ALLOCATED_METRIC, "GPU memory occupied by this process's torch tensors "
                                                    "(torch.cuda.memory_allocated, read at scrape time).",
                              labels=["device"]),
            GaugeMetricFamily(GPU_RESERVED_METRIC, "GPU memory held by this process's torch caching allocator "
                                                   "(torch.cuda.memory_reserved, read at scrape time).",
                              labels=["device"]),
        ]

    def collect(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")
        if torch is None:
            return
        try:
            cuda = torch.cuda
            if not cuda.is_available():
                return
            allocated, reserved = self._families()
            for i in range(cuda.device_count()):
                labels = [f"cuda:{i}"]
                allocated.add_metric(labels, float(cuda.memory_allocated(i)))
                reserved.add_metric(labels, float(cuda.memory_reserved(i)))
        except Exception:  # noqa: BLE001 - a broken driver or a partial torch must not break /metrics
            return
        yield allocated
        yield reserved


class Metrics:
    """The metric objects of one worker process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events_in = Counter("streamscore_worker_events_in", "Records consumed, by logical topic.",
                                 ["topic"], registry=r)
        self.predictions = Counter("streamscore_worker_predictions", "Predictions published, by model.",
                                   ["model"], registry=r)
        self.dlq = Counter("streamscore_worker_dlq", "Records sent to the dead-letter topic, by reason.",
                           ["reason"], registry=r)
        self.duplicates = Counter("streamscore_worker_duplicate_events",
                                  "Redelivered events answered from state (no re-learning).", registry=r)
        self.labels = Counter("streamscore_labels_joined", "Labels by outcome (joined, pending, duplicate).",
                              ["outcome"], registry=r)
        self.batch_size = Histogram("streamscore_worker_batch_size_records", "Records per micro-batch.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.processing_latency = Histogram("streamscore_worker_processing_latency_seconds",
                                            "Micro-batch receive to publish, per event.",
                                            buckets=LATENCY_BUCKETS_S, registry=r)
        self.e2e_latency = Histogram("streamscore_worker_end_to_end_latency_seconds",
                                     "Kafka record timestamp of the event to publish of its prediction.",
                                     buckets=LATENCY_BUCKETS_S, registry=r)
        self.assigned = Gauge("streamscore_worker_assigned_partitions",
                              "Partitions of the events topic assigned to this worker.", registry=r)
        self.partitions_lost = Counter(
            "streamscore_worker_partitions_lost",
            "Partitions taken away while this worker may not have been a member of its group (it was "
            "expelled, e.g. paused past the session timeout): their unflushed state was dropped, not written.",
            registry=r)
        self.model_metric = Gauge("streamscore_model_prequential",
                                  "Prequential metric of a model on one partition.",
                                  ["model", "metric", "partition"], registry=r)
        self.drifts = Counter("streamscore_model_drift_detections",
                              "Concept drifts detected by ADWIN on a model's prequential error stream.",
                              ["model"], registry=r)
        self.changelog_restored = Counter(
            "streamscore_state_changelog_restored_records",
            "State records read back from the changelog topic when a partition was opened (recovery).",
            registry=r)
        self.changelog_fenced = Counter(
            "streamscore_state_changelog_fenced_records",
            "Changelog records a reader skipped: flushes of a lower owner epoch that landed after a "
            "newer owner's fence (a zombie's late writes; streams/changelog.py, \"Fencing\").",
            registry=r)
        self.changelog_recovery = Histogram(
            "streamscore_state_changelog_recovery_seconds",
            "Seconds to bring one partition's state up to date from its changelog.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300), registry=r)
        self.flush_seconds = Histogram(
            "streamscore_state_flush_seconds",
            "One flush, from its seal to its offsets acknowledged: changelog sent and delivered, state "
            "written (it runs beside the batches that follow; a commit covers only finished flushes).",
            buckets=LATENCY_BUCKETS_S, registry=r)
        self.flush_keys = Histogram("streamscore_state_flush_keys", "State keys written by one flush.",
                                    buckets=(10, 100, 500, 1000, 2500, 5000, 10000, 25000, 100000), registry=r)
        self.standby_applied = Counter(
            "streamscore_state_standby_applied_records",
            "Changelog records applied to this worker's standby copies of partitions it does not own.",
            registry=r)
        self.fetch_wait_ms = Gauge(
            "streamscore_worker_fetch_wait_ms",
            "fetch.wait.max.ms of the worker's events/labels fetcher: fetch_wait_ms, or longer once a fetch "
            "stalled (a broker on s3:// storage answering empty; streams/_faust_hooks.py).",
            registry=r)
        self.standby_partitions = Gauge(
            "streamscore_state_standby_partitions",
            "Partitions this worker keeps a standby copy of (dealt by the group leader: standby_replicas).",
            registry=r)
        self.stores_removed = Counter(
            "streamscore_state_stores_removed",
            "Local copies of partitions deleted after state_cleanup_delay_s unused (moved elsewhere).",
            registry=r)
        self.checkpoint_swaps = Counter("streamscore_model_checkpoint_swaps",
                                        "Torch checkpoints hot-swapped into this worker.", ["model"], registry=r)
        self.rule_hits = Counter("streamscore_rule_hits", "Events a rule matched, by rule name.", ["rule"],
                                 registry=r)
        self.inference_latency = Histogram("streamscore_model_batch_inference_seconds",
                                           "One forward pass of a torch model over a micro-batch.",
                                           ["model", "device"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.build_info = Info("streamscore_build", "Pipeline and streamscore version of this worker (value 1).",
                               registry=r)
        self.worker = WorkerCollector()
        r.register(self.worker)
        self.gpu = GPUCollector()
        r.register(self.gpu)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        for topic in INPUT_TOPICS:
            self.events_in.labels(topic=topic)
        for reason in Reason:
            self.dlq.labels(reason=reason.value)
        for outcome in LABEL_OUTCOMES:
            self.labels.labels(outcome=outcome)
        self._labelled: dict[tuple[int, tuple[str, ...]], Any] = {}

    def labelled(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)`` (values in label order), looked up once per label set.

        ``labels()`` validates the values, builds a key and takes a lock on each
        call (3-5 µs on a slow day here); the worker counts each batch under
        five or six label sets, so a small batch paid that several times over.
        The label sets are few (topics, models, outcomes, reasons, rules).

        >>> m = Metrics()
        >>> m.labelled(m.events_in, "events") is m.labelled(m.events_in, "events")
        True
        """
        key = (id(metric), values)
        child = self._labelled.get(key)
        if child is None:
            child = self._labelled[key] = metric.labels(*values)
        return child

    def bind(self, scorer: Any) -> None:
        """Read lag and state size from ``scorer`` at every scrape; set the build info.

        ``scorer`` is duck-typed (a :class:`~streams.agents.BatchScorer`):
        ``lag``, ``processors[p].store.estimate_keys()``, and optionally
        ``spec.name`` / ``spec.models[0].name`` (build info and the champion's
        predictions series, created at zero; ``features`` for a pipeline
        without models). The drift series of every model, the checkpoint swap
        series of every torch model (``kind`` in ``models.registry.BATCH_KINDS``)
        and the hit series of every rule (``spec.rules[i].name``) are created
        at zero too, so ``increase()`` counts a worker's first swap or hit.
        Binding again replaces the source.
        """
        self.worker.scorer = scorer
        spec = getattr(scorer, "spec", None)
        self.set_build_info(str(getattr(spec, "name", "") or ""))
        if spec is not None:  # the label BatchScorer counts predictions under
            models = getattr(spec, "models", None) or ()
            self.predictions.labels(model=str(models[0].name) if models else "features")
            for m in models:
                self.drifts.labels(model=str(m.name))
            # lazily: the worker has imported models already, a bare Metrics() need not
            from models.registry import BATCH_KINDS

            for m in models:
                if getattr(m, "kind", None) in BATCH_KINDS:
                    self.checkpoint_swaps.labels(model=str(m.name))
            for rule in getattr(spec, "rules", None) or ():
                self.rule_hits.labels(rule=str(rule.name))

    def set_build_info(self, pipeline: str, version: str | None = None) -> None:
        self.build_info.info({"pipeline": pipeline, "version": version or _version()})

    @staticmethod
    def observe_many(histogram: Histogram, amount: float, n: int) -> None:
        """``n`` observations of the same ``amount`` in O(buckets), not O(n).

        For per-event figures that are the same for every event of a batch
        (a batch's receive-to-publish time): one call per batch on the hot path.
        """
        if n <= 0:
            return
        buckets = getattr(histogram, "_buckets", None)
        bounds = getattr(histogram, "_upper_bounds", None)
        total = getattr(histogram, "_sum", None)
        if buckets is None or bounds is None or total is None:  # pragma: no cover - other client versions
            for _ in range(n):
                histogram.observe(amount)
            return
        total.inc(amount * n)
        for i, bound in enumerate(bounds):
            if amount <= bound:
                buckets[i].inc(n)
                break

    @staticmethod
    def observe_batch(histogram: Histogram, values: Sequence[float]) -> None:
        """Observe many values with one bucket search per value and one ``inc`` per bucket.

        ``Histogram.observe`` takes a lock and walks the buckets per call (~1 µs);
        a micro-batch of thousands of end-to-end latencies is counted here instead.
        """
        buckets = getattr(histogram, "_buckets", None)
        bounds = getattr(histogram, "_upper_bounds", None)
        total = getattr(histogram, "_sum", None)
        if buckets is None or bounds is None or total is None:  # pragma: no cover - other client versions
            for v in values:
                histogram.observe(v)
            return
        counts = [0] * len(bounds)
        for v in values:
            counts[bisect_left(bounds, v)] += 1
        total.inc(sum(values))
        for i, c in enumerate(counts):
            if c:
                buckets[i].inc(c)

    def value(self, name: str, **labels: str) -> float | None:
        """Current value of a sample (tests and reports)."""
        return self.registry.get_sample_value(name, labels)

    def names(self) -> set[str]:
        """Every sample name this registry can expose (``_total``, ``_bucket``, ... included)."""
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"),
            "info": ("_info",),
            "stateset": ("",),
            "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        }
        out: set[str] = set()
        for family in self.registry.collect():
            for suffix in suffixes.get(family.type, ("",)):
                out.add(family.name + suffix)
            out.update(s.name for s in family.samples)
        return out

    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` on ``host:port`` (0 disables)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)


def scrape(url: str, timeout: float = 2.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of a ``/metrics`` endpoint: ``{sample name: [(labels, value), ...]}``."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=timeout).read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str) -> float:
    """Sum of a sample over the label sets that match ``match``."""
    return sum(v for labels, v in samples.get(name, ()) if all(labels.get(k) == x for k, x in match.items()))


def histogram_quantile(q: float, samples: dict[str, list[tuple[dict[str, str], float]]],
                       name: str) -> float | None:
    """Prometheus's ``histogram_quantile`` over one histogram's ``_bucket`` samples (linear in a bucket).

    >>> s = {"h_bucket": [({"le": "0.1"}, 50.0), ({"le": "0.2"}, 100.0), ({"le": "+Inf"}, 100.0)]}
    >>> round(histogram_quantile(0.75, s, "h"), 6)
    0.15
    """
    buckets: dict[float, float] = {}
    for labels, v in samples.get(name + "_bucket", ()):
        le = float(labels["le"])
        buckets[le] = buckets.get(le, 0.0) + v
    if not buckets:
        return None
    bounds = sorted(buckets)
    count = buckets[bounds[-1]]
    if count == 0:
        return None
    rank = q * count
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if b == float("inf"):
                return prev_bound
            return prev_bound + (b - prev_bound) * ((rank - prev_count) / (c - prev_count) if c > prev_count else 0.0)
        prev_bound, prev_count = b, c
    return bounds[-2] if len(bounds) > 1 else None
