"""Every Prometheus metric of a streamscore worker, in one explicit registry.

Why one module: names, units and labels are decided once
(``streamscore_<subsystem>_<name>_<unit>``, base units, counters without
``_total`` in code), each worker owns its :class:`Metrics` (and so its
``CollectorRegistry``), and tests build their own. Hot-path code increments
per micro-batch, not per event.

>>> m = Metrics()
>>> m.events_in.labels(topic="events").inc(3)
>>> m.value("streamscore_worker_events_in_total", topic="events")
3.0
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: Sub-millisecond to 10 s, for processing and end-to-end latencies.
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                     0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


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
        self.model_metric = Gauge("streamscore_model_prequential",
                                  "Prequential metric of a model on one partition.",
                                  ["model", "metric", "partition"], registry=r)

    def value(self, name: str, **labels: str) -> float | None:
        """Current value of a sample (tests and reports)."""
        return self.registry.get_sample_value(name, labels)

    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` on ``host:port`` (0 disables)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
