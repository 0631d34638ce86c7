"""The state changelog: every partition store mirrored to a compacted Kafka topic.

Why: a partition's RocksDB store lives on one machine's disk. When Kafka gives
the partition to a worker elsewhere (a scale-out, a machine lost), that
worker must continue with the same windows, dedupe markers and model
snapshots, or it would score differently from the worker it replaces. So
every write of a store also goes to the changelog topic (one partition per
input partition, keyed by the state key, a tombstone for a delete, compacted
so the log stays bounded by the key set, as Kafka Streams and faust do), and a
store is brought up to date from the changelog before its partition is
processed. The local store is a cache of the changelog; the changelog is the
truth.

Commit order (docs/reliability.md, section 3): outputs and changelog records
are produced, then both producers are flushed, then the local RocksDB batch
is written (with the changelog offset it now includes), then faust commits
the input offsets. A crash anywhere in between loses nothing: the input
records after the committed offset are processed again, and everything they
touch is idempotent by event id.

Recovery reads the changelog to the high watermark reported by *fetch*
responses (librdkafka's partition-EOF event), never ListOffsets, which the
embedded broker answers wrongly for multi-record batches.

Where the local store starts: its own ``CHANGELOG_OFFSET`` key. It is a
*lower bound* of the changelog position the store includes (a retried send can
only add records), and replaying from any lower bound is harmless: records are
applied in log order, so each key ends at its last value. The producer keeps
one request in flight, so a retry can repeat a record but never reorder a
key's records.

**A flush is all or nothing.** A worker killed while its producer delivers a
flush leaves a prefix of that flush in the log: say the prediction markers
(``p:``) and one model's snapshot, but not the next model's. Applied as it
is, that prefix would tell the restarted worker "these events are answered"
while one model never learned them: after replay that model differs from an
uninterrupted run's (the kill sweep caught exactly this, 757 learns missing
from a Hoeffding tree). So every flush ends with a *commit marker* record
(key :data:`COMMIT_MARKER`), and recovery applies the records of a flush only
when its marker is read; the records after the last marker are a flush that
never completed, and are not applied.

Who cleans up such a tail: the partition's next owner. After recovery it
writes, for every key in the tail, the value its (consistent) store holds, or
a tombstone, then a marker. Readers then see the stale tail, its correction
and a marker as one flush whose net effect is the consistent state, and
compaction removes the stale records because the correction supersedes them.
A standby, which must not write, leaves its position before the tail and
reads it again next time, when the owner's marker has arrived.

**Fencing.** A worker expelled from its group while it was not running (a
long pause: a *zombie*) may have a flush on the wire when it stops, and
that flush lands after the partition's new owner has recovered. Applied by
later readers, it would put the zombie's stale state over the new owner's.
Kafka fences zombies with transactions, which the embedded broker does not
honour, so the log fences them itself. Each owner of a partition has an
*epoch*, one more than the highest epoch in the partition's log when it
took the partition over, and every commit marker it writes carries it
(header ``epoch``). A new owner reads the partition to its end, writes a
*fence* (a marker of its new epoch that completes no record: its value is
0), then reads on to its fence. Readers apply a flush only if its marker's
epoch is not lower than the highest epoch read before it in that
partition; a flush whose epoch is lower is a zombie's late write and is
skipped (:attr:`Recovery.fenced`). Records not yet completed when a fence
is read were an unfinished flush of an earlier owner and are not applied
either. What lands before the fence the new owner reads too, so every
reader agrees. The new owner corrects the keys of skipped records as it
corrects an unfinished flush (below), so that a compacted log, whose
markers compaction thins out, ends at the same values. A store keeps the
highest epoch it has read beside its changelog offset (``CHANGELOG_FENCE``).
Why an epoch of the log's own and not the group generation: a group that is
deleted, or expires while all its workers are stopped, starts its
generations again from 1, and a log fenced by generation would then refuse
every new flush. (The markers also carry the ``writer`` and the group
``generation``, for operators.)

What this does not cover: a flush in which some record failed delivery for
good while the marker after it was accepted (one request in flight makes
that a record the broker rejects outright, such as one over its size limit;
the topic is created with :data:`MAX_RECORD_BYTES` for that reason), followed
by a crash before the next flush rewrites those keys. The worker raises
:class:`~streams.agents.DeliveryError` on such a flush and commits nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from streams.broker import create_topics
from streams.settings import Settings
from streams.state import PartitionStore

#: (writer, group generation) of a flush: its commit marker's headers.
Origin = tuple[str, int | None]

log = logging.getLogger(__name__)

#: Most bytes of one changelog record (a model snapshot is one record).
MAX_RECORD_BYTES = 32 * 1024 * 1024

#: Topic configs of a changelog: compacted, never deleted by time or size, and records as large as a
#: model snapshot may be (a broker's default limit is ~1 MB).
CHANGELOG_CONFIG = {"cleanup.policy": "compact", "retention.ms": "-1", "retention.bytes": "-1",
                    "max.message.bytes": str(MAX_RECORD_BYTES + 1024 * 1024)}

#: Key of the record that ends each flush (its value: how many records the flush sent before it).
#: Sorts before every state key, like the store's CHANGELOG_OFFSET, and is never a state key.
COMMIT_MARKER = b"\x00changelog-commit"


def create_changelog_topic(settings: Settings, pipeline: str) -> str:
    """Create ``pipeline``'s changelog topic (compacted, a partition per input partition) if missing; its name."""
    topic = settings.changelog_topic(pipeline)
    create_topics(settings.broker, {topic: settings.partitions}, config=CHANGELOG_CONFIG,
                  client_config=settings.kafka_client_config())
    return topic


class ChangelogError(RuntimeError):
    """The changelog could not be read (recovery stops rather than guess)."""


@dataclass(frozen=True)
class Recovery:
    """What one partition's recovery did."""

    partition: int
    start: int          # first changelog offset read
    end: int            # the store's new CHANGELOG_OFFSET
    applied: int        # records applied (puts and deletes of completed flushes)
    seeded: int         # records the owner wrote: its store to an empty changelog, or an unfinished flush's correction
    seconds: float
    unfinished: int = 0  # records of flushes that never completed (no marker, or cut by a fence), not applied
    fenced: int = 0      # records of completed flushes of a lower epoch after a higher one: not applied
    epoch: int | None = None  # the owner's epoch (its fence's); a standby: the highest epoch read


def marker_epoch(headers: list[tuple[str, bytes]] | None) -> int | None:
    """The owner epoch a commit marker names; None when it names none (written without fencing)."""
    for name, value in headers or ():
        if name == "epoch":
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


class Changelog:
    """Writes and replays the changelog topic of one pipeline's partition stores.

    ``producer_config`` and ``consumer_config`` are librdkafka configs (the
    worker's :class:`~streams.settings.Settings` builds them, security
    settings included).
    """

    def __init__(self, topic: str, producer_config: dict[str, Any], consumer_config: dict[str, Any],
                 compression: tuple[str, int] = ("zstd", 1)) -> None:
        self.topic = topic
        self._compression = compression
        self._producer_config = {
            **producer_config,
            # one request in flight: a retried send may repeat a record right after itself, never
            # reorder one key's records. Not the idempotent producer: a broker that loses its
            # producer state in a restart (the embedded one) makes that a fatal error.
            "enable.idempotence": False,
            "max.in.flight.requests.per.connection": 1,
            # a flush's records go out at once, ~1 KB each (stored predictions): the broker's cost is
            # per byte (Settings.compression)
            "compression.type": compression[0],
            "compression.level": compression[1],
            # a commit's records are sent at once and waited for: lingering only delays them
            "linger.ms": 0,
            "message.max.bytes": max(int(producer_config.get("message.max.bytes", 0)), MAX_RECORD_BYTES),
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
        }
        self._consumer_config = {
            **consumer_config,
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            "fetch.message.max.bytes": MAX_RECORD_BYTES,
            "fetch.wait.max.ms": 50,      # an empty partition answers only when this expires (Tansu)
        }
        self._producer: Producer | None = None
        self._errors: list[str] = []

    # -- writing ----------------------------------------------------------------
    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(self._producer_config)
        return self._producer

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None and err.code() != KafkaError._PURGE_QUEUE:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def send(self, partition: int, entries: Iterator[tuple[bytes, bytes | None]] | list[tuple[bytes, bytes | None]],
             origin: Origin | None = None, epoch: int | None = None) -> int:
        """Produce one flush: ``(key, value)`` entries (``None``: a delete) to ``partition``, then its commit
        marker; how many records, the marker included (0: no entries, nothing sent)."""
        n = self.produce_entries(partition, entries)
        n += self.mark(partition, n, origin, epoch)
        self.producer.poll(0)
        return n

    def produce_entries(self, partition: int,
                        entries: Iterator[tuple[bytes, bytes | None]] | list[tuple[bytes, bytes | None]]) -> int:
        """Produce part of a flush (no marker); how many records. A flush sent in parts ends with :meth:`mark`."""
        producer = self.producer
        produce = producer.produce       # called directly: ~4 records per event go through this loop
        topic = self.topic
        n = 0
        for k, v in entries:
            try:
                produce(topic, v, k, partition)
            except BufferError:          # the local queue is full: let deliveries drain it, then again
                producer.poll(0.5)
                produce(topic, v, k, partition)
            n += 1
        return n

    def mark(self, partition: int, n: int, origin: Origin | None = None, epoch: int | None = None) -> int:
        """The commit marker of a flush of ``n`` records to ``partition``; 1 (0 when ``n`` is 0: no marker).

        ``origin``: (writer, group generation), written as the marker's headers
        ``writer`` and ``generation``: who wrote the flush, under which
        assignment (for operators). ``epoch``: the writer's owner epoch of
        this partition (:attr:`Recovery.epoch`), header ``epoch``, by which
        readers fence (module docstring).
        """
        if not n:
            return 0
        self._produce(self.topic, str(n).encode(), COMMIT_MARKER, partition, _headers(origin, epoch))
        return 1

    def fence(self, epochs: dict[int, int], origin: Origin, timeout: float = 60.0) -> None:
        """Write a fence (a commit marker of no records) of ``epochs[p]`` to each partition ``p``, delivered.

        From there on every reader skips the flushes of a lower epoch
        (module docstring). With a producer of its own, as :meth:`_seed`.
        """
        own = Changelog(self.topic, self._producer_config, self._consumer_config, self._compression)
        try:
            for p, epoch in epochs.items():
                own._produce(self.topic, b"0", COMMIT_MARKER, p, _headers(origin, epoch))
            errors = own.flush(timeout)
        finally:
            own._producer = None            # flushed above; nothing left to wait for
        if errors:
            raise ChangelogError(f"fencing {self.topic}{sorted(epochs)} failed: {errors[:3]}")

    def purge(self) -> int:
        """Drop the records queued and not yet sent (a worker that lost its partitions); how many were queued."""
        if self._producer is None:
            return 0
        n = len(self._producer)
        self._producer.purge(in_queue=True, in_flight=False)
        self._producer.poll(0)              # their delivery reports: purged, not failed (_on_delivery)
        return n

    def in_flight(self) -> int:
        """Records sent and not yet acknowledged (or failed); serves delivery reports first."""
        if self._producer is None:
            return 0
        self._producer.poll(0)
        return len(self._producer)

    def take_errors(self) -> list[str]:
        """The delivery errors since the last call."""
        errors, self._errors = self._errors, []
        return errors

    def _produce(self, topic: str, value: bytes | None, key: bytes, partition: int,
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        kw = {} if headers is None else {"headers": headers}
        try:
            self.producer.produce(topic, value, key, partition, **kw)
        except BufferError:                 # the local queue is full: let deliveries drain it, then again
            self.producer.poll(0.5)
            self.producer.produce(topic, value, key, partition, **kw)

    def flush(self, timeout: float) -> list[str]:
        """Wait for every sent record; the errors since the last call (empty: all delivered)."""
        if self._producer is not None:
            left = self._producer.flush(timeout)
            if left:
                self._errors.append(f"{left} changelog records not delivered within {timeout}s")
        return self.take_errors()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None

    # -- reading ----------------------------------------------------------------
    def recover(self, store: PartitionStore, partition: int, timeout: float = 300.0,
                seed: bool = True, origin: Origin | None = None) -> Recovery:
        """Bring ``store`` up to date from its changelog partition (see :meth:`recover_many`)."""
        return self.recover_many({partition: store}, timeout, seed, origin)[partition]

    def recover_many(self, stores: dict[int, PartitionStore], timeout: float = 300.0,
                     seed: bool = True, origin: Origin | None = None) -> dict[int, Recovery]:
        """Bring each partition's store up to date from the changelog, all partitions in one read.

        Each store is read from its own ``CHANGELOG_OFFSET`` to the partition's
        fetch high watermark, and every *completed* flush is applied (one that
        ends with its commit marker; see the module docstring).

        ``seed``: the caller owns these partitions and may write their
        changelog. The owner then corrects an unfinished flush it found at the
        end (its keys are written again with the store's values), and writes a
        store that has data but no changelog position (changelogs were off, or
        the topic is new and empty) to the changelog whole, so that the next
        owner finds it there. A standby (``seed=False``) writes nothing.

        ``origin``: (this worker, its group generation), for an owner: each
        partition is read to its end, then fenced with a new epoch (one more
        than the highest read), then read on to the fence; the owner marks its
        flushes with that epoch (:attr:`Recovery.epoch`). A flush whose marker
        names a lower epoch than one read before it is skipped (module
        docstring, "Fencing").
        """
        if not stores:
            return {}
        t0 = time.monotonic()
        starts = {p: st.changelog_offset for p, st in stores.items()}
        fences = {p: st.changelog_fence for p, st in stores.items()}
        cut: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in stores}     # unfinished, then fenced
        fenced = dict.fromkeys(stores, 0)
        ends: dict[int, int] = {}
        committed: dict[int, int | None] = dict.fromkeys(stores)   # offset after each partition's last marker
        flushed = dict.fromkeys(stores, False)                     # a marker that completes records was read
        awaited: dict[int, int] = {}                               # our fences, not yet read back: epochs
        epochs: dict[int, int] = {}                                # the epochs of our fences
        first_ends: dict[int, int] = {}                            # where each log ended before our fence
        me = origin[0].encode() if origin is not None else b""
        applied = dict.fromkeys(stores, 0)
        c = Consumer(self._consumer_config)
        try:
            meta = c.list_topics(self.topic, timeout=30).topics.get(self.topic)
            for p in stores:
                if meta is None or meta.error is not None or p not in meta.partitions:
                    why = meta.error if meta is not None and meta.error is not None else "no such partition"
                    raise ChangelogError(f"changelog topic {self.topic} has no partition {p} ({why}): "
                                         "a worker creates it with one partition per input partition")
            c.assign([TopicPartition(self.topic, p, max(starts[p] or 0, 0)) for p in stores])
            deadline = time.monotonic() + timeout
            flushes: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in stores}   # since the last marker
            ready: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in stores}     # completed, not written

            def read_to_end() -> None:
                """Consume until every partition's end (after our fence, when one is awaited)."""
                while len(ends) < len(stores):
                    if time.monotonic() > deadline:
                        left = sorted(set(stores) - set(ends))
                        raise ChangelogError(f"{self.topic} partitions {left}: not read to their end within {timeout}s")
                    for m in c.consume(10_000, 0.05):   # returns early only when full: keep the wait short
                        p = m.partition()
                        err = m.error()
                        if err is not None:
                            if err.code() == KafkaError._PARTITION_EOF:
                                if p not in awaited:
                                    ends.setdefault(p, m.offset())
                            elif err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART or not err.retriable():
                                raise ChangelogError(f"{self.topic}[{p}]: {err}")
                            continue
                        if p in ends and not fencing:   # written after our end (a standby reads a live log)
                            continue
                        if m.key() == COMMIT_MARKER:
                            marker(p, m)
                        else:
                            flushes[p].append((m.key(), m.value()))
                    for p in [p for p in ahead if p not in ends]:
                        # a store whose position is past the log's end (the topic was made again): this
                        # broker then answers neither records nor an end; its fetch high watermark says
                        hw = c.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)[1]
                        if 0 <= hw < starts[p]:  # type: ignore[operator]
                            ahead.discard(p)
                            c.seek(TopicPartition(self.topic, p, hw))
                    for p, batch in ready.items():      # completed flushes, written in large batches
                        if batch and (len(batch) >= 10_000 or p in ends):
                            stores[p].apply(batch)
                            applied[p] += len(batch)
                            ready[p] = []

            def marker(p: int, m: Any) -> None:
                """A flush is complete: apply it, unless it is a fence or fenced."""
                headers = m.headers()
                epoch = marker_epoch(headers)
                if m.value() == b"0":               # a fence: what is pending was cut short before it
                    cut[p] += flushes[p]
                    if awaited.get(p) == epoch and headers and ("writer", me) in headers:
                        del awaited[p]              # ours: read on to the end from here
                elif epoch is not None and fences[p] is not None and epoch < fences[p]:
                    cut[p] += flushes[p]            # a zombie's flush, landed after a newer owner's fence
                    fenced[p] += len(flushes[p])
                else:
                    ready[p] += flushes[p]
                    flushed[p] = True
                flushes[p] = []
                if epoch is not None and (fences[p] is None or epoch > fences[p]):
                    fences[p] = epoch
                committed[p] = m.offset() + 1

            fencing = seed and origin is not None   # an owner: records after a first end are read on
            ahead = {p for p in stores if (starts[p] or 0) > 0}   # positions that may be past the log's end
            read_to_end()
            if fencing:                             # fence, then read on to the fence (module docstring)
                awaited.update({p: (fences[p] if fences[p] is not None else 0) + 1 for p in stores})
                epochs.update(awaited)
                self.fence(dict(awaited), origin)
                first_ends.update(ends)
                ends.clear()
                read_to_end()
        finally:
            c.close()
        out: dict[int, Recovery] = {}
        for p, store in stores.items():
            start, end, tail = starts[p], ends[p], flushes[p]
            if fenced[p]:
                log.warning("%s[%d]: %d records of flushes of a lower epoch (a zombie's, written after a newer "
                            "owner's fence) not applied", self.topic, p, fenced[p])
            entries: list[tuple[bytes, bytes | None]] = []
            if seed:
                if tail or cut[p]:   # not applied: their keys as this (consistent) store holds them
                    entries = store.values(dict.fromkeys(k for k, _ in cut[p] + tail))
                    log.warning("%s[%d]: %d records not applied (unfinished or fenced flushes, the last marker "
                                "before offset %s); writing their keys' current values",
                                self.topic, p, len(tail) + len(cut[p]), committed[p])
                if start is not None and first_ends.get(p, end) < start:
                    log.warning("%s[%d] ends at %d, before this store's position %d (topic recreated?): "
                                "seeding it from the local store", self.topic, p, first_ends.get(p, end), start)
                    entries += store.items()
                elif start is None and not flushed[p]:   # no completed flush in the log (fences only): seed it
                    entries += store.items()
            seeded = self._seed(store, p, entries, origin, epochs.get(p)) if entries else 0
            if seed or not tail:
                position = end + seeded
            else:                 # a standby: read the unfinished flush again next time
                position = committed[p] if committed[p] is not None else max(start or 0, 0)
            store.set_changelog_position(position, fences[p])
            out[p] = rec = Recovery(p, start or 0, position, applied[p], seeded, time.monotonic() - t0,
                                    len(tail) + len(cut[p]) - fenced[p], fenced[p], epochs.get(p, fences[p]))
            if applied[p] or seeded:
                log.info("recovered %s[%d]: %d records from offset %d (+%d written) in %.2fs",
                         self.topic, p, applied[p], rec.start, seeded, rec.seconds)
        return out

    def _seed(self, store: PartitionStore, partition: int,
              entries: Iterator[tuple[bytes, bytes | None]] | list[tuple[bytes, bytes | None]],
              origin: Origin | None = None, epoch: int | None = None) -> int:
        """Write ``entries`` as one flush and wait for it; how many records, the marker included.

        With a producer of its own: recovery runs off the event loop (a worker opens a partition
        in an executor) while the loop may flush the shared producer for the partitions it
        scores, and the two must not wait for, or take, each other's delivery errors.
        """
        own = Changelog(self.topic, self._producer_config, self._consumer_config, self._compression)
        try:
            n = own.send(partition, entries, origin, epoch)
            errors = own.flush(60.0)
        finally:
            own._producer = None            # flushed above; nothing left to wait for
        if errors:
            raise ChangelogError(f"writing {self.topic}[{partition}] failed: {errors[:3]}")
        return n


def _headers(origin: Origin | None, epoch: int | None = None) -> list[tuple[str, bytes]] | None:
    """A commit marker's headers: who wrote the flush (``writer``), under which group ``generation``, and
    the writer's owner ``epoch`` of the partition (by which readers fence)."""
    headers = []
    if origin is not None:
        writer, generation = origin
        headers += [("writer", writer.encode()), ("generation", str(generation).encode())]
    if epoch is not None:
        headers.append(("epoch", str(epoch).encode()))
    return headers or None
