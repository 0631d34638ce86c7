"""The worker's batch handler: batch in, batch out.

Why thin: faust hands us one fetched partition-batch at a time (see
``streams/_faust_hooks.py``); this module finds the partition's processor,
publishes its outputs without awaiting each send, and counts. Commit order:
outputs and changelog records delivered -> state written (RocksDB batch) ->
offsets acknowledged into faust's bookkeeping -> committed by faust. A batch's
offsets are acknowledged only by the flush that covers it (:class:`_Flush`),
so faust never commits past what the state holds; the flush itself runs a
chunk at a time beside the batches that follow (docs/reliability.md §3).
"""

from __future__ import annotations

import asyncio
import logging
import math
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
from streams.failpoints import Failpoints
from streams.metrics import Metrics
from streams.processor import Output, PartitionProcessor, score_together
from streams.settings import Settings
from streams.spec import PipelineSpec
from streams.state import PartitionStore, remove_leftovers, remove_unused

log = logging.getLogger(__name__)


#: Prequential figures exported as the streamscore_model_prequential gauge (classification, regression).
GAUGED_METRICS = ("accuracy", "log_loss", "roc_auc", "mae", "rmse", "mean_reward", "regret")


def _mtime(path: Path, default: float) -> float:
    """``path``'s modification time; ``default`` if it is gone (another worker on this state
    directory deleted it since it was listed)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return default


class BatchFailed(RuntimeError):
    """A batch failed half-way; nothing more is flushed or committed by this worker."""


class DeliveryError(RuntimeError):
    """An output record could not be delivered; offsets must not be committed."""


class NotAMember(RuntimeError):
    """This worker may have been expelled from its group: it must not write state for its partitions."""


#: the fractional part of the golden ratio: partition p's snapshots are offset by (p * _GOLDEN) % 1 of
#: the interval, spread evenly over it whatever the partition numbers
_GOLDEN = 0.6180339887498949

#: what a flush step yields: more work now, or waiting on the broker (poll again shortly)
_MORE, _WAIT = 0, 1


class _Flush:
    """One flush: the sealed writes of some partitions and the input offsets they cover.

    Why a generator of steps: a flush of a moderately loaded worker holds
    thousands of keys (a stored prediction per event, the windows of every
    entity touched) and used to hold the event loop for 20-50 ms while it
    sent them and waited for the broker: most of the worker's p99 latency.
    Now :meth:`BatchScorer.start_flush` (after a batch, at a commit) starts
    one that runs a chunk at a time on the event loop, between batches (whose
    writes go to a fresh set, see ``PartitionStore.seal``), and faust commits
    only the offsets of flushes that finished. :meth:`finish` runs the rest at once
    (a close, a revoke, a synchronous :meth:`BatchScorer.flush`). Steps: seal
    each partition's store (what its processor holds in memory first, its
    model snapshots included) and take the offsets its batches so far cover;
    changelog records in chunks and each partition's commit marker; wait until the
    outputs produced before the seal and the changelog records are delivered;
    write each store's sealed batch, ``CHUNK`` keys a step; acknowledge the
    offsets. A flush waits on the broker between steps for at most
    ``commit_interval_s``, then with blocking producer flushes; past that it
    still yields between its pieces of work only while the worker keeps up
    (:meth:`_pause`): under a backlog every yield lets a whole batch in, and
    the pending writes and the commit lag must stay bounded.
    Errors: an output lost fails the scorer (see :meth:`_delivered`); a
    changelog record not delivered unseals the writes (the next flush sends
    them again) and leaves the offsets unacknowledged.
    """

    CHUNK = 512

    def __init__(self, scorer: BatchScorer, procs: list[PartitionProcessor], timeout: float) -> None:
        self.scorer, self.procs, self.timeout = scorer, procs, timeout
        self.acks: list[tuple[str, int, list[int]]] = []    # (topic, partition, offsets) the flush covers
        self.blocking = False          # finish(), or past the deadline: wait with blocking flushes
        self.finishing = False         # finish(): run to the end now (nobody drives the steps any more)
        self.cancelled = False         # the scorer failed: stop, touch nothing
        self.keys = 0
        self.started = time.perf_counter()
        # past this, the rest runs at once: with a backlog every yield lets a whole batch in,
        # and a flush that never ends would let the pending writes and commit lag grow
        self.deadline = time.monotonic() + max(0.05, scorer.settings.commit_interval_s)
        self._steps = self._run()

    def step(self) -> int | None:
        """Run the next step: ``_MORE``, ``_WAIT``, or None when the flush is over."""
        return next(self._steps, None)

    def finish(self) -> None:
        """Run every step left, blocking on the broker where needed."""
        self.blocking = self.finishing = True
        for _ in self._steps:
            pass

    def _late(self) -> bool:
        """True once the flush is finishing or has had its time: waits on the broker block from then on."""
        if not self.blocking and time.monotonic() > self.deadline:
            self.blocking = True
        return self.blocking

    def _pause(self) -> bool:
        """True: yield to the batches between two pieces of work (a partition, a chunk) now.

        Before the deadline, always. After it, only while the worker keeps up
        (:meth:`BatchScorer.caught_up`): then the batches a yield lets in are
        small, and the pieces left (a partition's RocksDB write is 3-6 ms)
        would otherwise run back to back as one stall of the event loop, which
        every event arriving meanwhile waits out (20-30 ms every flush at half
        of peak on 2 cores, most of ``full``'s p99). Under a backlog a yield
        lets a whole fetch round in, so the rest runs at once, as before.
        """
        if self.finishing:
            return False
        return not self._late() or self.scorer.caught_up()

    def _run(self) -> Any:
        sc = self.scorer
        try:
            for i, proc in enumerate(self.procs):   # one partition per step: a model snapshot is ~2.5 ms
                if i and self._pause():
                    yield _MORE
                    if self.cancelled:
                        return
                proc.prepare()
                self.keys += proc.store.seal()
                self.acks += [(topic, proc.partition, offsets)
                              for topic, offsets in sc._unacked.pop(proc.partition, ())]
            cl = sc.changelog
            if cl is not None:
                origin = sc.origin()
                for proc in self.procs:
                    items = proc.store.sealed_items()
                    for lo in range(0, len(items), self.CHUNK):
                        yield from self._member()
                        if self.cancelled:
                            return
                        cl.produce_entries(proc.partition, items[lo:lo + self.CHUNK])
                        if self._pause():
                            yield _MORE
                            if self.cancelled:
                                return
                    yield from self._member()
                    if self.cancelled:
                        return
                    proc.store.stage_sealed(len(items) + cl.mark(proc.partition, len(items), origin,
                                                                 sc._epochs.get(proc.partition)))
            yield from self._delivered()
            if self.cancelled:
                return
            first = True
            for proc in self.procs:
                while proc.store.sealed:             # a RocksDB write of CHUNK keys (~1-2 ms) per step
                    if not first and self._pause():
                        yield _MORE
                        if self.cancelled:
                            return
                    first = False
                    proc.store.write_sealed(self.CHUNK)
        except BaseException:
            if not self.cancelled:
                self._give_back()
            raise
        if self.acks:                                # state written, offsets not yet acknowledged
            sc.failpoints.reached("after_state_write")
        if sc.acker is not None:
            for topic, partition, offsets in self.acks:
                if partition in sc.processors:     # a partition revoked meanwhile is its next owner's
                    sc.acker(topic, partition, offsets)
        sc.metrics.flush_seconds.observe(time.perf_counter() - self.started)
        sc.metrics.flush_keys.observe(self.keys)
        sc.save_checkpoints()

    def _give_back(self) -> None:
        """This flush's sealed writes and the offsets they cover become pending again (the next flush's)."""
        for proc in self.procs:
            proc.store.unseal()
        for topic, partition, offsets in reversed(self.acks):
            self.scorer._unacked.setdefault(partition, []).insert(0, (topic, offsets))

    def _member(self) -> Any:
        """Wait (yielding) while this worker may have been expelled from its group: its partitions
        may belong to another worker now, whose changelog records this one must not follow with
        older ones. Either a heartbeat succeeds again, or the partitions are revoked as lost and
        this flush is cancelled (:meth:`BatchScorer.lose`). A flush being finished cannot wait: it raises."""
        while (why := self.scorer._lease_lost()) is not None:
            if self.finishing:
                raise NotAMember(why)
            yield _WAIT
            if self.cancelled:
                return

    def _delivered(self) -> Any:
        """Wait until every output sent so far and the changelog records are delivered; raise if not.

        Outputs: the producer's queue empty means every output of the sealed
        batches was answered (the broker's acks; failures come as delivery
        reports). Under a steady load it empties between batches; if not
        within the flush's time, a blocking flush waits for it. An output that
        failed is lost: the scorer fails (:meth:`BatchScorer._fail`), nothing
        it holds is committed, and the restarted worker answers those records
        again from the last committed state.
        """
        sc = self.scorer
        producer = sc._producer
        while producer is not None:
            producer.poll(0)
            if not len(producer):
                break
            if self._late():
                if left := producer.flush(self.timeout):
                    reason = f"{left} output records not delivered within {self.timeout}s"
                    sc._fail(reason)
                    raise DeliveryError(reason)
                break
            yield _WAIT
            if self.cancelled:
                return
        if sc._delivery_errors:
            errs, sc._delivery_errors = sc._delivery_errors, []
            reason = f"{len(errs)} output records failed: {errs[:3]}"
            sc._fail(reason)
            raise DeliveryError(reason)
        cl = sc.changelog
        if cl is None:
            return
        while cl.in_flight():
            if self._late():
                if errs := cl.flush(self.timeout):
                    raise DeliveryError(f"changelog records not delivered: {errs[:3]}")
                return
            yield _WAIT
            if self.cancelled:
                return
        if errs := cl.take_errors():
            raise DeliveryError(f"changelog records not delivered: {errs[:3]}")


class BatchScorer:
    """Owns the partition processors, the output producer and the metrics of a worker."""

    #: records waiting (over all partitions) under which the worker counts as keeping up (:meth:`caught_up`)
    CAUGHT_UP = 2_000

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
        self._started = time.monotonic()
        self._next_metrics: dict[int, float] = {}      # partition -> when its next snapshot is due
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
        self._swept = False                                       # remove_stale has run once
        #: ``acker(topic, partition, offsets)``: acknowledge input offsets into faust's bookkeeping, which
        #: commits them (set by streams.app); None: nobody commits (tests, in-process runs)
        self.acker: Any = None
        #: ``lease()``: False while this worker may no longer be a member of its group (see
        #: streams._faust_hooks.GroupLease; its ``why_not()``, if it has one, says why); a flush then
        #: waits before it writes, and a close meanwhile loses the partitions (:meth:`lose`) instead of
        #: flushing them. None: always a member (in-process runs)
        self.lease: Any = None
        #: ``generation()``: the group generation of this worker's assignment, on each flush's commit marker
        self.generation: Any = None
        #: partition -> this worker's owner epoch of it (its changelog fence; streams/changelog.py, "Fencing")
        self._epochs: dict[int, int | None] = {}
        self.failpoints = Failpoints.from_env()                      # fault suite only (streams/failpoints.py)
        self._unacked: dict[int, list[tuple[str, list[int]]]] = {}   # partition -> batches not yet flushed
        self._inflight: _Flush | None = None                        # the flush being sent, if any
        self._flush_task: asyncio.Task[None] | None = None          # its driver (a reference keeps it alive)
        self._flush_error: BaseException | None = None              # why the last background flush failed
        if settings.changelog:
            self.changelog = Changelog(
                settings.changelog_topic(spec.name),
                settings.producer_config(**{"client.id": f"{settings.app_id}-changelog"}),
                settings.consumer_config(group=f"{settings.app_id}-changelog-restore",
                                         **{"client.id": f"{settings.app_id}-restore"}),
                compression=(settings.compression, settings.compression_level))
        self.metrics.bind(self)  # lag and state size read at scrape time; build info

    @property
    def batch_topics(self) -> frozenset[str]:
        return frozenset({self._topics["events"], self._topics["labels"]})

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(self.output_config())
        return self._producer

    def output_config(self) -> dict[str, Any]:
        """librdkafka config of the producer of predictions, dlq records and metrics.

        Delivery reports only for failures: ``_on_delivery`` records errors (a
        failed flush stops the commit), and a Python callback per delivered
        record cost ~1 µs each; set once here, not per produce call (~0.25 µs
        per record). Compressed (``Settings.compression``): a prediction is
        ~1 KB of JSON with its features.
        """
        s = self.settings
        return s.producer_config(**{
            "client.id": f"{s.app_id}-out", "enable.idempotence": False,
            "compression.type": s.compression, "compression.level": s.compression_level,
            "delivery.report.only.error": True, "on_delivery": self._on_delivery})

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
                for p, rec in self.changelog.recover_many(stores, origin=self.origin()).items():
                    self._epochs[p] = rec.epoch
                    self.metrics.changelog_restored.inc(rec.applied)
                    self.metrics.changelog_fenced.inc(rec.fenced)
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
        while self._failed is None:          # a failed worker is stopping: it opens nothing
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

    async def refresh_standbys(self, standbys: Iterable[int]) -> dict[int, int]:
        """Catch this worker's standby copies of ``standbys`` (partitions it does not own) up with their
        changelogs.

        Standby replicas: the group leader deals each partition to
        ``standby_replicas`` workers besides its owner (streams/assignment.py),
        and each keeps a local store of it no more than ``standby_interval_s``
        behind the changelog, so taking a partition over reads only what was
        written since the last refresh instead of the whole changelog. A store
        another process holds open (workers sharing this state directory) is
        skipped: it is already on this disk. Returns ``{partition: records applied}``.
        """
        if self.changelog is None:
            return {}
        others = sorted(p for p in set(standbys) if p not in self.processors and p not in self._opening)
        self.metrics.standby_partitions.set(len(others))
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
            self.metrics.changelog_fenced.inc(rec.fenced)
        return {p: r.applied for p, r in recs.items()}

    def local_copies(self) -> dict[int, Path]:
        """``{partition: directory}`` of this pipeline's local stores on disk, open or not."""
        parent = self.state_path(0).parent
        prefix = f"{self._topics['events']}-"
        out: dict[int, Path] = {}
        if parent.is_dir():
            for d in parent.iterdir():
                tail = d.name[len(prefix):]
                if d.name.startswith(prefix) and tail.isdigit() and d.is_dir():
                    out[int(tail)] = d
        return out

    async def remove_stale(self, keep: Iterable[int], now: float | None = None) -> list[int]:
        """Delete the local copies of partitions not in ``keep`` (owned or dealt here) and unused for
        ``state_cleanup_delay_s``; the partitions deleted.

        "Unused" is the directory's modification time: a store's close and
        each standby refresh set it. A copy open in another process (a worker
        sharing this state directory) is skipped by its lock
        (:func:`streams.state.remove_unused`); one open here, or being opened
        or refreshed, is skipped here, and an opening waits for a deletion in
        progress. Only with the changelog on: without it a local copy is the
        only copy of the partition's state.
        """
        delay = self.settings.state_cleanup_delay_s
        if self.changelog is None or delay <= 0 or self._failed is not None:
            return []
        now = time.time() if now is None else now
        keep = set(keep)
        old = {p: d for p, d in self.local_copies().items()
               if p not in keep and p not in self.processors and p not in self._opening
               and now - _mtime(d, now) >= delay}
        first, self._swept = not self._swept, True
        if not old and not first:    # the first sweep also clears what a crash left half-deleted
            return []

        def remove() -> list[int]:
            gone = [p for p, d in sorted(old.items()) if remove_unused(d)]
            remove_leftovers(self.state_path(0).parent)
            return gone

        task = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(None, remove))
        self._track(sorted(old), task)
        gone = await task
        if gone:
            self.metrics.stores_removed.inc(len(gone))
            log.info("deleted the local copies of partitions %s: unused for %.0fs, owned and followed elsewhere",
                     gone, delay)
        return gone

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
        logical, proc = await self._take(topic, partition, records, highwater)
        try:
            self._publish(partition, proc.process(logical, records))
        except Exception as exc:
            self._fail(f"partition {partition}: {type(exc).__name__}: {exc}")
            raise
        self._handled(topic, partition, logical, records, proc, t0)
        if due := self._metrics_due(time.monotonic()):
            self.publish_metrics(due)
        self.start_flush()

    async def handle_round(self, batches: Sequence[tuple[str, int, Sequence[Any], int | None]]) -> None:
        """Process one fetch round: every partition-batch the consumer fetched together, in turn.

        The same as :meth:`handle` on each, with one difference: partitions
        whose torch models are frozen and the same (every partition of a
        pipeline, normally) have their new events scored in one forward pass
        per model for the whole round (:func:`streams.processor.score_together`),
        not one per partition-batch. The scores are the same bits. So every
        batch is staged (decoded, deduped, its window features computed)
        before the first is scored, and no flush may begin until the last is
        published: a flush sealed in between would write window state of
        events whose predictions are not out yet. A partition with two
        batches in the round (its events and labels topics) has the second
        processed after the first, in a second wave.
        """
        # a partition's second batch (its labels topic's) only after its first: in waves
        waves: list[list[tuple[str, int, Sequence[Any], int | None]]] = []
        seen: dict[int, int] = {}
        for b in batches:
            n = seen[b[1]] = seen.get(b[1], -1) + 1
            if n == len(waves):
                waves.append([])
            waves[n].append(b)
        for wave in waves:
            if len(wave) == 1:
                await self.handle(*wave[0])
            else:
                await self._handle_wave(wave)

    async def _handle_wave(self, batches: Sequence[tuple[str, int, Sequence[Any], int | None]]) -> None:
        """:meth:`handle_round` on batches of distinct partitions."""
        t0 = time.perf_counter()
        if missing := [b[1] for b in batches if b[1] not in self.processors and self._failed is None]:
            # normally opened at assignment. Open them all before anything is staged: a rebalance
            # may run while we wait, and a partition revoked meanwhile is its next owner's to read
            await self.open_partitions(missing)
            batches = [b for b in batches if b[1] in self.processors]
            if not batches:
                return
        taken = [await self._take(*b) for b in batches]     # no wait left in them: all open
        partition = batches[0][1]
        try:
            staged = []
            for (_, partition, records, _), (_, proc) in zip(batches, taken):
                staged.append((proc, proc.stage(records)))
            scores = score_together(staged)
            for (topic, partition, records, _), (logical, proc), (_, prep), s in zip(batches, taken, staged, scores):
                out = proc.process(logical, records, prep, *(s if s is not None else (None, None)))
                self._publish(partition, out)
                self._handled(topic, partition, logical, records, proc, t0)
        except Exception as exc:
            self._fail(f"partition {partition}: {type(exc).__name__}: {exc}")
            raise
        if due := self._metrics_due(time.monotonic()):
            self.publish_metrics(due)
        self.start_flush()

    async def _take(self, topic: str, partition: int, records: Sequence[Any],
                    highwater: int | None) -> tuple[str, PartitionProcessor]:
        """Before a batch is processed: refuse after a failure, note the lag, swap in new checkpoints,
        open the partition if it is not yet; its logical topic and its processor."""
        if self._failed is not None:
            # the worker is stopping, but faust may hand over a batch it had fetched: reopened
            # from the last committed state, the partition would answer it as if the failed
            # batches never happened, and those answers would be published
            raise BatchFailed(f"not processing after a failed batch ({self._failed}); restart the worker")
        logical = self._logical.get(topic, topic)
        if highwater is not None and records:
            self.lag[(logical, partition)] = max(0, highwater - records[-1].offset - 1)
        self.poll_checkpoints()
        proc = self.processors.get(partition)
        if proc is None:       # normally opened at assignment; recovery runs off the event loop
            await self.open_partitions([partition])
            proc = self.processors[partition]
        return logical, proc

    def _publish(self, partition: int, outputs: Sequence[Output]) -> None:
        """Produce a batch's outputs, without waiting for them (the flush does)."""
        produce = self.producer.produce
        topics = self._topics
        for t, key, value in outputs:       # Output(topic, key, value), unpacked in C
            try:
                produce(topics[t], value, key, partition)
            except BufferError:
                self.producer.poll(0.1)
                produce(topics[t], value, key, partition)

    def _handled(self, topic: str, partition: int, logical: str, records: Sequence[Any],
                 proc: PartitionProcessor, t0: float) -> None:
        """After a batch is published: its offsets wait for the next flush; count it."""
        if self.acker is not None and records:
            self._unacked.setdefault(partition, []).append((topic, [r.offset for r in records]))
        self.producer.poll(0)
        self._count(logical, len(records), proc, time.perf_counter() - t0)

    def start_flush(self) -> None:
        """Seal and start sending a flush on the event loop, once ``commit_interval_s`` has passed since
        the last one began and none is in flight (called after each batch and at each faust commit).

        Why on our own clock too, not only when faust commits: faust's commit timer slips
        behind its interval while a commit waits on the broker.
        """
        if (self._inflight is not None or self._failed is not None or not self.processors
                or time.monotonic() - self._last_flush < self.settings.commit_interval_s):
            return
        job = self._begin(None)
        self._inflight = job
        self._flush_task = asyncio.get_running_loop().create_task(self._drive(job))

    async def _drive(self, job: _Flush) -> None:
        """Run ``job`` a step at a time, yielding to the batches between steps. A cancelled drive
        (the loop closing) leaves the job in flight: :meth:`flush` finishes it."""
        try:
            while (r := job.step()) is not None:
                await asyncio.sleep(0.001 if r == _WAIT else 0)
        except Exception as exc:
            log.warning("flush failed, nothing it covers is acknowledged: %s", exc)
            self._flush_error = exc
        if self._inflight is job:
            self._inflight = None

    def on_commit(self) -> None:
        """faust is about to commit the offsets acknowledged so far: raise if the last flush failed
        (nothing it covered was acknowledged), else start the next flush if one is due."""
        if self._failed is not None:
            raise BatchFailed(f"not committing after a failed batch ({self._failed}); restart the worker")
        if self._flush_error is not None:
            err, self._flush_error = self._flush_error, None
            raise err
        self.start_flush()

    def _begin(self, partitions: Iterable[int] | None, timeout: float | None = None) -> _Flush:
        """A flush of ``partitions`` (all by default); its first steps seal them one at a time."""
        if timeout is None:      # every record is delivered or has failed by then (message.timeout.ms)
            timeout = self.settings.delivery_timeout_s + 5.0
        parts = list(self.processors if partitions is None else partitions)
        procs = [proc for p in parts if (proc := self.processors.get(p)) is not None]
        self._last_flush = time.monotonic()
        return _Flush(self, procs, timeout)

    def _fail(self, reason: str) -> None:
        """A batch failed half-way: its state may hold answers that were never published.

        Drop every partition's pending state and in-memory models, and refuse
        every later flush and batch, so faust commits nothing more and no
        partition is reopened from stale state to answer a batch fetched
        before the stop: the worker stops, and its next start processes again
        from the committed offsets, from the state written at the last commit.
        The changelog records still queued are dropped (a failed flush must
        not complete in the log).
        """
        self._failed = reason
        log.error("a batch failed half-way (%s): dropping pending state; no offset is committed any more", reason)
        if self._inflight is not None:
            self._inflight.cancelled = True
            self._inflight = None
        self._unacked.clear()
        for proc in self.processors.values():
            proc.store.discard()
            proc.close()
        self.processors.clear()
        self._epochs.clear()
        if self.changelog is not None:
            # what is still queued (the cancelled flush's tail, its marker) must not land later:
            # a marker delivered after records of its flush timed out would complete a flush
            # with holes, which the next owner would apply
            purged = self.changelog.purge()
            if purged:
                log.warning("dropped %d changelog records queued by the failed flush", purged)

    def caught_up(self) -> bool:
        """True while the records waiting behind this worker's last batches are few (under
        :attr:`CAUGHT_UP` over its partitions, by the fetch high watermarks)."""
        mine = self.processors
        return sum(n for (_, p), n in self.lag.items() if p in mine) < self.CAUGHT_UP

    def _count(self, logical: str, n: int, proc: PartitionProcessor, elapsed_s: float = 0.0) -> None:
        m, s = self.metrics, proc.last_stats
        child = m.labelled
        child(m.events_in, logical).inc(n)
        m.batch_size.observe(n)
        if s.events:  # receive-to-publish is the batch's time for each of its events
            m.observe_many(m.processing_latency, elapsed_s, s.events)
        if s.predictions:
            child(m.predictions, proc.decision if proc.models else "features").inc(s.predictions)
        if s.duplicates:
            m.duplicates.inc(s.duplicates)
        if s.labels_joined:
            child(m.labels, "joined").inc(s.labels_joined)
        if s.labels_pending:
            child(m.labels, "pending").inc(s.labels_pending)
        if s.labels_timed_out:
            child(m.labels, "timed_out").inc(s.labels_timed_out)
        if s.labels_late:
            child(m.labels, "late").inc(s.labels_late)
        for reason, c in (s.dlq or {}).items():
            child(m.dlq, reason).inc(c)
        if s.latencies_s:
            m.observe_batch(m.e2e_latency, s.latencies_s)
        for rule, c in (s.rule_hits or {}).items():
            child(m.rule_hits, rule).inc(c)
        for model, secs in (s.inference_s or {}).items():
            dev = next((b.device.type for b in proc.batch_models if b.name == model), "cpu")
            child(m.inference_latency, model, dev).observe(secs)

    def _metrics_due(self, now: float) -> list[int]:
        """The partitions whose snapshot is due: each on a grid of ``metrics_interval_s`` of its own,
        offset by a fraction of the interval that depends on the partition.

        Why offsets: the snapshots of all partitions at once held the event
        loop for 10-16 ms every interval (``full``, 4 partitions, at half of
        peak on 2 cores): every event arriving meanwhile waited. Spread over
        the interval, each batch publishes at most one or two. After an idle
        spell they are all due, and the next batch publishes them all.
        """
        due, out = self._next_metrics, []
        for p in self.processors:
            at = due.get(p)
            if at is None:                  # a partition not published yet: its first grid point
                at = due[p] = self._metrics_grid(p, self._started)
            if now >= at:
                out.append(p)
        return out

    def _metrics_grid(self, partition: int, after: float) -> float:
        """The first point of ``partition``'s snapshot grid after ``after``."""
        iv = self.settings.metrics_interval_s
        start = self._started + iv * ((partition * _GOLDEN) % 1.0)
        return start + iv * (math.floor((after - start) / iv) + 1)

    def publish_metrics(self, partitions: Iterable[int] | None = None) -> None:
        """Publish a JSON snapshot of each of ``partitions`` (all by default) to the metrics topic, and
        set their gauges."""
        mono, now = time.monotonic(), int(time.time() * 1000)
        for p in list(self.processors if partitions is None else partitions):
            proc = self.processors.get(p)
            if proc is None:
                continue
            self._next_metrics[p] = self._metrics_grid(p, mono)
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
        """Finish the flush in flight, then flush ``partitions`` (all by default) at once: deliver every
        output and changelog record, write state, acknowledge the offsets covered. Raises
        :class:`DeliveryError` on loss.

        On an error nothing is written locally: the pending state stays
        pending and is sent again by the next flush, and no offset it covers is
        acknowledged, so faust commits none.
        """
        if self._failed is not None:
            raise BatchFailed(f"not committing after a failed batch ({self._failed}); restart the worker")
        job, self._inflight = self._inflight, None
        if job is not None:
            job.finish()
        self._begin(partitions, timeout).finish()

    def _lease_lost(self) -> str | None:
        """Why this worker may no longer own its partitions; None while it does (or has no lease)."""
        lease = self.lease
        if lease is None or lease():
            return None
        why = getattr(lease, "why_not", None)
        return why() if why is not None else "this worker may no longer own its partitions"

    def origin(self) -> tuple[str, int | None]:
        """(this worker, its group generation): written on each flush's changelog commit marker, and on
        the fence it writes when it takes partitions over, for operators reading a changelog (readers
        fence by the owner epoch instead: streams/changelog.py, "Fencing")."""
        return self.worker_id, (self.generation() if self.generation is not None else None)

    def lose(self, partitions: Iterable[int] | None = None) -> None:
        """Close the processors of ``partitions`` (all by default) *without* flushing: they were lost.

        Lost, not revoked: this worker was expelled from its group while it was
        not running (see streams._faust_hooks.GroupLease), so another worker
        already owns them and has recovered their state from the changelog.
        What this one holds unflushed is dropped, and the changelog records it
        has queued but not sent are purged when it loses every partition: the
        new owner re-reads the input from the committed offsets and computes
        the same state (docs/reliability.md section 7). Outputs already
        published stay published; they are byte-identical to the new owner's.
        """
        parts = set(self.processors if partitions is None else partitions)
        job = self._inflight
        if job is not None and any(proc.partition in parts for proc in job.procs):
            job.cancelled = True
            self._inflight = None
            job._give_back()                       # the lost partitions' share is dropped below
        for p in parts:
            self._unacked.pop(p, None)
            self._epochs.pop(p, None)
            self._next_metrics.pop(p, None)
            proc = self.processors.pop(p, None)
            if proc is not None:
                proc.store.discard()
                proc.close()
                self.metrics.partitions_lost.inc()
        if not self.processors and self.changelog is not None:
            purged = self.changelog.purge()
            if purged:
                log.warning("dropped %d changelog records queued for partitions now lost", purged)

    def close(self, partitions: Iterable[int] | None = None) -> None:
        """Flush and close the processors of ``partitions`` (all by default)."""
        parts = list(self.processors if partitions is None else partitions)
        try:
            self.publish_metrics()
        except (KafkaException, BufferError):  # pragma: no cover - shutting down anyway
            pass
        try:
            if (why := self._lease_lost()) is not None:
                raise NotAMember(why)     # expelled while not running: another worker owns them already
            if self._failed is None:
                self.flush(parts)         # raises NotAMember too, should the lease lapse meanwhile
        except NotAMember as exc:
            log.warning("partitions lost %s: %s; their unflushed state is dropped, not written", sorted(parts), exc)
            self.lose(parts)
            if partitions is None and self.changelog is not None:
                self.changelog.close()
            return
        if self._torch_models:
            self.save_checkpoints(force=True)
        for p in parts:
            self._epochs.pop(p, None)
            self._next_metrics.pop(p, None)
            proc = self.processors.pop(p, None)
            if proc is not None:
                proc.close()
        if partitions is None and self.changelog is not None:
            self.changelog.close()
