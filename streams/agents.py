"""The worker's batch handler: batch in, batch out.

Why thin: faust hands us one fetched partition-batch at a time (see
``streams/_faust_hooks.py``); this module finds the partition's processor,
publishes its outputs without awaiting each send, and counts. Commit order,
enforced by :meth:`BatchScorer.flush` which runs before every faust offset
commit: outputs delivered (producer flush) -> state written (RocksDB batch) ->
offsets committed (faust).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaException, Producer

from models import persistence
from models.registry import BATCH_KINDS
from streams.changelog import Changelog, create_changelog_topic
from streams.metrics import Metrics
from streams.processor import PartitionProcessor
from streams.settings import Settings
from streams.spec import PipelineSpec
from streams.state import PartitionStore

log = logging.getLogger(__name__)


#: Prequential figures exported as the streamscore_model_prequential gauge (classification, regression).
GAUGED_METRICS = ("accuracy", "log_loss", "roc_auc", "mae", "rmse", "mean_reward", "regret")


class BatchFailed(RuntimeError):
    """A batch failed half-way; nothing more is flushed or committed by this worker."""


class DeliveryError(RuntimeError):
    """An output record could not be delivered; offsets must not be committed."""


class BatchScorer:
    """Owns the partition processors, the output producer and the metrics of a worker."""

    def __init__(self, settings: Settings, spec: PipelineSpec, metrics: Metrics | None = None,
                 producer: Producer | None = None) -> None:
        self.settings = settings
        self.spec = spec
        self.metrics = metrics or Metrics()
        self.processors: dict[int, PartitionProcessor] = {}
        self._producer = producer
        self._topics = {name: settings.topic(name) for name in ("events", "labels", "predictions", "dlq", "metrics")}
        self._logical = {v: k for k, v in self._topics.items()}
        self._delivery_errors: list[str] = []
        self._last_metrics = time.monotonic()
        self._last_flush = time.monotonic()
        self.worker_id = f"{os.uname().nodename}-{os.getpid()}"
        #: (logical topic, partition) -> records behind the fetch high watermark
        self.lag: dict[tuple[str, int], int] = {}
        self._drifts_seen: dict[tuple[int, str], int] = {}
        self._torch_models = [m.name for m in spec.models if m.kind in BATCH_KINDS]
        if self._torch_models:
            import torch

            if settings.torch_threads:
                torch.set_num_threads(settings.torch_threads)
            # torch's first optimizer imports torch._dynamo (~1.2 s on a 2-core box): pay that
            # here, at start-up, not on the event loop when the first partition is assigned
            # (where it stalls the first batches, heartbeats included)
            torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
        self._deployed: dict[str, tuple[Any, Any]] = {}     # model -> (file stamp, checkpoint or None)
        self._saved_versions: dict[tuple[int, str], str] = {}
        self._last_poll = -1e9                      # poll the deployed checkpoints at the first batch
        self._last_save = time.monotonic()
        self.changelog: Changelog | None = None
        self._opening: dict[int, asyncio.Future[None]] = {}      # partition -> its recovery in progress
        self._failed: str | None = None                           # why a batch failed half-way (see _fail)
        if settings.changelog:
            self.changelog = Changelog(
                settings.changelog_topic(spec.name),
                settings.producer_config(**{"client.id": f"{settings.app_id}-changelog"}),
                settings.consumer_config(group=f"{settings.app_id}-changelog-restore",
                                         **{"client.id": f"{settings.app_id}-restore"}))
        self.metrics.bind(self)  # lag and state size read at scrape time; build info

    @property
    def batch_topics(self) -> frozenset[str]:
        return frozenset({self._topics["events"], self._topics["labels"]})

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            # delivery reports only for failures: _on_delivery records errors (a failed flush
            # stops the commit), and a Python callback per delivered record cost ~1 µs each;
            # set once here, not per produce call (~0.25 µs per record)
            self._producer = Producer(self.settings.producer_config(
                **{"client.id": f"{self.settings.app_id}-out", "enable.idempotence": False,
                   "delivery.report.only.error": True, "on_delivery": self._on_delivery}))
        return self._producer

    @property
    def snapshot_key(self) -> bytes:
        """HMAC key of model snapshots: the configured one, else this state directory's key file."""
        if self.settings.snapshot_key is not None:
            return self.settings.snapshot_key.get_secret_value().encode()
        return persistence.key_file(self.settings.state_dir / self.settings.app_id / ".snapshot-key")

    def state_path(self, partition: int) -> Path:
        return (self.settings.state_dir / self.settings.app_id / self.spec.name
                / f"{self._topics['events']}-{partition}")

    def create_changelog_topic(self) -> None:
        """Create the changelog topic (compacted, a partition per input partition) if it is missing."""
        if self.changelog is not None:
            create_changelog_topic(self.settings, self.spec.name)

    def open_stores(self, partitions: Iterable[int]) -> dict[int, PartitionStore]:
        """The partitions' local stores, brought up to date from the changelog (when there is one).

        All partitions are recovered in one read of the changelog: a worker
        given four partitions waits for the longest one, not for the sum.
        """
        stores: dict[int, PartitionStore] = {}
        try:
            for p in partitions:
                stores[p] = self._open_local(p)
            if self.changelog is not None and stores:
                for rec in self.changelog.recover_many(stores).values():
                    self.metrics.changelog_restored.inc(rec.applied)
                    self.metrics.changelog_recovery.observe(rec.seconds)
        except BaseException:       # nothing half-open stays locked
            for st in stores.values():
                st.close()
            raise
        return stores

    def _open_local(self, partition: int, timeout: float = 60.0) -> PartitionStore:
        """The local store; waits while another process on this state directory holds its lock
        (a worker there refreshing it as a standby, or still closing it after a rebalance)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return PartitionStore(self.state_path(partition), wal=self.changelog is None)
            except Exception as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def open_store(self, partition: int) -> PartitionStore:
        return self.open_stores([partition])[partition]

    async def open_partitions(self, partitions: Iterable[int]) -> None:
        """Open (recover) the processors of ``partitions`` off the event loop.

        Called when partitions are assigned, and by :meth:`handle` for a
        partition it has no processor for. One recovery per partition at a
        time: a partition being opened, or refreshed as a standby, is waited
        for first.
        """
        wanted = set(partitions)
        while True:
            await self.opened(wanted)
            todo = sorted(wanted - set(self.processors))
            if not todo:
                return

            async def run(todo: list[int] = todo) -> None:
                stores = await asyncio.get_running_loop().run_in_executor(None, self.open_stores, todo)
                for p, store in stores.items():
                    self.processor(p, store)

            self._track(todo, asyncio.ensure_future(run()))

    def _track(self, partitions: list[int], task: asyncio.Future[Any]) -> None:
        for p in partitions:
            self._opening[p] = task

        def done(t: asyncio.Future[Any]) -> None:
            for p in partitions:
                if self._opening.get(p) is t:
                    del self._opening[p]
        task.add_done_callback(done)

    async def opened(self, partitions: Iterable[int]) -> None:
        """Wait for the recoveries (or standby refreshes) in progress of ``partitions``, if any."""
        waits = {self._opening[p] for p in partitions if p in self._opening}
        if waits:
            await asyncio.gather(*waits)

    async def refresh_standbys(self, owned: Iterable[int]) -> dict[int, int]:
        """Catch this worker's copies of the partitions it does not own up with their changelogs.

        Standby replicas: a worker keeps a local store of every partition of
        the pipeline, owned or not, no more than ``standby_interval_s`` behind
        the changelog, so taking a partition over reads only what was written
        since the last refresh instead of the whole changelog. A store another
        process holds open (workers sharing this state directory) is skipped:
        it is already on this disk. Returns ``{partition: records applied}``.
        """
        if self.changelog is None:
            return {}
        others = [p for p in range(self.settings.partitions)
                  if p not in set(owned) and p not in self.processors and p not in self._opening]
        if not others:
            return {}
        task = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(None, self._refresh, others))
        self._track(others, task)
        try:
            return await task
        except Exception as exc:  # noqa: BLE001 - a standby is an optimisation: never stop scoring for it
            log.warning("standby refresh of partitions %s failed: %s", others, exc)
            return {}

    def _refresh(self, partitions: list[int]) -> dict[int, int]:
        assert self.changelog is not None
        stores: dict[int, PartitionStore] = {}
        for p in partitions:
            try:
                stores[p] = PartitionStore(self.state_path(p), wal=False)   # standbys exist with a changelog only
            except Exception as exc:  # noqa: BLE001 - a standby is an optimisation: never stop for it
                if "lock" not in str(exc).lower():   # else: open in another worker on this state directory
                    log.warning("standby store of partition %d cannot be opened: %s", p, exc)
                continue
        try:
            # a short deadline: a standby refresh must never hold a stopping worker for long
            recs = self.changelog.recover_many(stores, timeout=30.0, seed=False)
        finally:
            for st in stores.values():
                st.close()
        for rec in recs.values():
            self.metrics.standby_applied.inc(rec.applied)
        return {p: r.applied for p, r in recs.items()}

    def processor(self, partition: int, store: PartitionStore | None = None) -> PartitionProcessor:
        proc = self.processors.get(partition)
        if proc is None:
            store = store if store is not None else self.open_store(partition)
            proc = PartitionProcessor(self.spec, store, partition,
                                      max_event_bytes=self.settings.max_event_bytes,
                                      snapshot_key=self.snapshot_key, device=self.settings.device,
                                      dedupe_ttl_ms=int(self.settings.dedupe_ttl_s * 1000))
            self.processors[partition] = proc
            log.info("partition %d opened: model versions %s", partition,
                     {n: proc.version_of(n) for n in proc.prequential} if proc.models else "-")
            for name, (stamp, ckpt) in self._deployed.items():   # a new partition starts on the deployed weights
                if ckpt is not None and not proc.has_history(name):
                    proc.swap_weights(name, ckpt)
        return proc

    # -- torch checkpoints -------------------------------------------------------
    def deploy_path(self, model: str) -> Path:
        """Where a trained checkpoint is dropped for the workers to hot-swap."""
        return self.settings.checkpoints / self.spec.name / f"{model}.pt"

    def checkpoint_path(self, model: str, partition: int) -> Path:
        """Where this worker saves a partition's torch model."""
        return self.settings.checkpoints / self.spec.name / model / f"p{partition}.pt"

    def poll_checkpoints(self, force: bool = False) -> list[str]:
        """Hot-swap every torch model whose deployed checkpoint changed; returns the new versions.

        Runs between batches (from :meth:`handle`), so no event is dropped or
        scored twice: the batches before it used the old weights, those after
        it the new ones, and each prediction names its version.
        """
        now = time.monotonic()
        if not self._torch_models or (not force and now - self._last_poll < 1.0):
            return []
        self._last_poll = now
        swapped = []
        for name in self._torch_models:
            path = self.deploy_path(name)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            stamp = (st.st_mtime_ns, st.st_size)
            if self._deployed.get(name, (None, None))[0] == stamp:
                continue
            from models.deep import load_checkpoint

            try:
                ckpt = load_checkpoint(path, device=self.settings.device)   # weights_only=True
            except Exception as exc:  # a half-copied or foreign file must not stop scoring
                log.error("checkpoint %s not loaded: %s", path, exc)
                self._deployed[name] = (stamp, None)
                continue
            self._deployed[name] = (stamp, ckpt)
            for proc in self.processors.values():
                swapped.append(proc.swap_weights(name, ckpt))
            self.metrics.checkpoint_swaps.labels(model=name).inc()
            log.info("hot-swapped %s from %s into %d partitions", name, path, len(self.processors))
        return swapped

    def save_checkpoints(self, force: bool = False) -> int:
        """Save each partition's torch models that learned since their last save (atomic files)."""
        now = time.monotonic()
        if not self._torch_models or (not force and now - self._last_save < self.settings.checkpoint_interval_s):
            return 0
        self._last_save = now
        n = 0
        for p, proc in self.processors.items():
            for m in proc.batch_models:
                if self._saved_versions.get((p, m.name)) != m.version:
                    path = self.checkpoint_path(m.name, p)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    m.save(path)
                    self._saved_versions[(p, m.name)] = m.version
                    n += 1
        return n

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err}")

    async def handle(self, topic: str, partition: int, records: Sequence[Any], highwater: int | None = None) -> None:
        """Process one partition-batch and publish its outputs (faust's batch handler)."""
        t0 = time.perf_counter()
        logical = self._logical.get(topic, topic)
        if highwater is not None and records:
            self.lag[(logical, partition)] = max(0, highwater - records[-1].offset - 1)
        self.poll_checkpoints()
        proc = self.processors.get(partition)
        if proc is None:       # normally opened at assignment; recovery runs off the event loop
            await self.open_partitions([partition])
            proc = self.processors[partition]
        try:
            outputs = proc.process(logical, records)
            produce = self.producer.produce
            topics = self._topics
            for o in outputs:
                try:
                    produce(topics[o.topic], o.value, o.key, partition)
                except BufferError:
                    self.producer.poll(0.1)
                    produce(topics[o.topic], o.value, o.key, partition)
        except Exception as exc:
            self._fail(f"partition {partition}: {type(exc).__name__}: {exc}")
            raise
        self.producer.poll(0)
        self._count(logical, len(records), proc, time.perf_counter() - t0)
        now = time.monotonic()
        if now - self._last_metrics >= self.settings.metrics_interval_s:
            self.publish_metrics()
        if now - self._last_flush >= self.settings.commit_interval_s:
            # flush on our own clock too, not only when faust commits: faust's commit timer
            # slips behind its interval while a commit waits on the broker, and each flush
            # stalls the loop for time proportional to what it holds (see flush)
            self.flush()

    def _fail(self, reason: str) -> None:
        """A batch failed half-way: its state may hold answers that were never published.

        Drop every partition's pending state and in-memory models, and refuse
        every later flush, so faust commits nothing more: the worker stops,
        and its next start processes again from the committed offsets, from
        the state written at the last commit.
        """
        self._failed = reason
        log.error("a batch failed half-way (%s): dropping pending state; no offset is committed any more", reason)
        for proc in self.processors.values():
            proc.store.discard()
            proc.close()
        self.processors.clear()

    def _count(self, logical: str, n: int, proc: PartitionProcessor, elapsed_s: float = 0.0) -> None:
        m, s = self.metrics, proc.last_stats
        m.events_in.labels(topic=logical).inc(n)
        m.batch_size.observe(n)
        if s.events:  # receive-to-publish is the batch's time for each of its events
            m.observe_many(m.processing_latency, elapsed_s, s.events)
        if s.predictions:
            m.predictions.labels(model=proc.decision if proc.models else "features").inc(s.predictions)
        if s.duplicates:
            m.duplicates.inc(s.duplicates)
        if s.labels_joined:
            m.labels.labels(outcome="joined").inc(s.labels_joined)
        if s.labels_pending:
            m.labels.labels(outcome="pending").inc(s.labels_pending)
        if s.labels_timed_out:
            m.labels.labels(outcome="timed_out").inc(s.labels_timed_out)
        if s.labels_late:
            m.labels.labels(outcome="late").inc(s.labels_late)
        for reason, c in (s.dlq or {}).items():
            m.dlq.labels(reason=reason).inc(c)
        if s.latencies_s:
            m.observe_batch(m.e2e_latency, s.latencies_s)
        for rule, c in (s.rule_hits or {}).items():
            m.rule_hits.labels(rule=rule).inc(c)
        for model, secs in (s.inference_s or {}).items():
            dev = next((b.device.type for b in proc.batch_models if b.name == model), "cpu")
            m.inference_latency.labels(model=model, device=dev).observe(secs)

    def publish_metrics(self) -> None:
        """Publish a JSON snapshot per partition to the metrics topic, and set the gauges."""
        self._last_metrics = time.monotonic()
        now = int(time.time() * 1000)
        for p, proc in self.processors.items():
            snap = proc.snapshot()
            for name, figures in snap["models"].items():
                for metric in GAUGED_METRICS:
                    if metric in figures:
                        self.metrics.model_metric.labels(model=name, metric=metric, partition=str(p)).set(
                            figures[metric])
                new = figures["drifts"] - self._drifts_seen.get((p, name), 0)
                if new > 0:
                    self.metrics.drifts.labels(model=name).inc(new)
                    self._drifts_seen[(p, name)] = figures["drifts"]
            doc = {"worker": self.worker_id, "pipeline": self.spec.name, "ts": now, **snap}
            self.producer.produce(self._topics["metrics"], orjson.dumps(doc), self.worker_id.encode())
        self.producer.poll(0)

    def flush(self, partitions: Iterable[int] | None = None, timeout: float | None = None) -> None:
        """Deliver every output and changelog record, then write state. Raises :class:`DeliveryError` on loss.

        On an error nothing is written locally: the pending state stays
        pending and is sent again by the next flush, and faust commits no
        offset past the records it covers.
        """
        if self._failed is not None:
            raise BatchFailed(f"not committing after a failed batch ({self._failed}); restart the worker")
        if timeout is None:      # every record is delivered or has failed by then (message.timeout.ms)
            timeout = self.settings.delivery_timeout_s + 5.0
        procs = [proc for p in (self.processors if partitions is None else partitions)
                 if (proc := self.processors.get(p)) is not None]
        for proc in procs:
            proc.prepare()
            if self.changelog is not None:
                proc.store.staged(self.changelog.send(proc.partition, proc.store.dirty_items()))
        batches = [proc.store.batch() for proc in procs]   # built while the producers deliver
        if self._producer is not None:
            left = self._producer.flush(timeout)
            if left:
                raise DeliveryError(f"{left} output records not delivered within {timeout}s")
        if self._delivery_errors:
            errs, self._delivery_errors = self._delivery_errors, []
            raise DeliveryError(f"{len(errs)} output records failed: {errs[:3]}")
        if self.changelog is not None and (errs := self.changelog.flush(timeout)):
            raise DeliveryError(f"changelog records not delivered: {errs[:3]}")
        for proc, wb in zip(procs, batches):
            proc.store.write(wb)
        self.save_checkpoints()
        self._last_flush = time.monotonic()

    def close(self, partitions: Iterable[int] | None = None) -> None:
        """Flush and close the processors of ``partitions`` (all by default)."""
        parts = list(self.processors if partitions is None else partitions)
        try:
            self.publish_metrics()
        except (KafkaException, BufferError):  # pragma: no cover - shutting down anyway
            pass
        if self._failed is None:
            self.flush(parts)
        if self._torch_models:
            self.save_checkpoints(force=True)
        for p in parts:
            proc = self.processors.pop(p, None)
            if proc is not None:
                proc.close()
        if partitions is None and self.changelog is not None:
            self.changelog.close()
