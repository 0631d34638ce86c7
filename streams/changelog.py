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

log = logging.getLogger(__name__)

#: Topic configs of a changelog: compacted, never deleted by time or size.
CHANGELOG_CONFIG = {"cleanup.policy": "compact", "retention.ms": "-1", "retention.bytes": "-1"}

#: Most bytes of one changelog record (a model snapshot is one record).
MAX_RECORD_BYTES = 32 * 1024 * 1024


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
    end: int            # changelog high watermark reached (the store's new CHANGELOG_OFFSET)
    applied: int        # records applied (puts and deletes)
    seeded: int         # local keys written to an empty changelog (see :meth:`Changelog.recover`)
    seconds: float


class Changelog:
    """Writes and replays the changelog topic of one pipeline's partition stores.

    ``producer_config`` and ``consumer_config`` are librdkafka configs (the
    worker's :class:`~streams.settings.Settings` builds them, security
    settings included).
    """

    def __init__(self, topic: str, producer_config: dict[str, Any], consumer_config: dict[str, Any]) -> None:
        self.topic = topic
        self._producer_config = {
            **producer_config,
            # one request in flight: a retried send may repeat a record right after itself, never
            # reorder one key's records. Not the idempotent producer: a broker that loses its
            # producer state in a restart (the embedded one) makes that a fatal error.
            "enable.idempotence": False,
            "max.in.flight.requests.per.connection": 1,
            "compression.type": "lz4",
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
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def send(self, partition: int, entries: Iterator[tuple[bytes, bytes | None]] | list[tuple[bytes, bytes | None]]) -> int:
        """Produce ``(key, value)`` entries (``None``: a delete) to ``partition``; how many."""
        produce = self.producer.produce
        topic = self.topic
        n = 0
        for k, v in entries:
            try:
                produce(topic, v, k, partition)
            except BufferError:
                self.producer.poll(0.5)
                produce(topic, v, k, partition)
            n += 1
        self.producer.poll(0)
        return n

    def flush(self, timeout: float) -> list[str]:
        """Wait for every sent record; the errors since the last call (empty: all delivered)."""
        if self._producer is not None:
            left = self._producer.flush(timeout)
            if left:
                self._errors.append(f"{left} changelog records not delivered within {timeout}s")
        errors, self._errors = self._errors, []
        return errors

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None

    # -- reading ----------------------------------------------------------------
    def recover(self, store: PartitionStore, partition: int, timeout: float = 300.0) -> Recovery:
        """Bring ``store`` up to date from its changelog partition (see :meth:`recover_many`)."""
        return self.recover_many({partition: store}, timeout)[partition]

    def recover_many(self, stores: dict[int, PartitionStore], timeout: float = 300.0,
                     seed: bool = True) -> dict[int, Recovery]:
        """Bring each partition's store up to date from the changelog, all partitions in one read.

        Each store is read from its own ``CHANGELOG_OFFSET`` to the partition's
        fetch high watermark. Seeding: a store that has data but no changelog
        position (changelogs were off, or the topic is new and empty) is
        written to the changelog whole, so the next owner finds it there;
        only the partition's owner may do that (``seed``: a standby does not).
        """
        if not stores:
            return {}
        t0 = time.monotonic()
        starts = {p: st.changelog_offset for p, st in stores.items()}
        ends: dict[int, int] = {}
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
            pending: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in stores}
            while len(ends) < len(stores):
                if time.monotonic() > deadline:
                    left = sorted(set(stores) - set(ends))
                    raise ChangelogError(f"{self.topic} partitions {left}: not read to their end within {timeout}s")
                for m in c.consume(10_000, 0.05):   # returns early only when full: keep the wait short
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            ends[m.partition()] = m.offset()
                        elif err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART or not err.retriable():
                            raise ChangelogError(f"{self.topic}[{m.partition()}]: {err}")
                        continue
                    pending[m.partition()].append((m.key(), m.value()))
                for p, batch in pending.items():
                    if batch and (len(batch) >= 10_000 or p in ends):
                        stores[p].apply(batch)
                        applied[p] += len(batch)
                        pending[p] = []
        finally:
            c.close()
        out: dict[int, Recovery] = {}
        for p, store in stores.items():
            start, end, seeded = starts[p], ends[p], 0
            if seed and (start is None or end < start):
                if start is not None:
                    log.warning("%s[%d] ends at %d, before this store's position %d (topic recreated?): "
                                "seeding it from the local store", self.topic, p, end, start)
                if end == 0 or start is not None:
                    seeded = self._seed(store, p)
                    end += seeded
            store.set_changelog_offset(end)
            out[p] = rec = Recovery(p, start or 0, end, applied[p], seeded, time.monotonic() - t0)
            if applied[p] or seeded:
                log.info("recovered %s[%d]: %d records from offset %d (+%d seeded) in %.2fs",
                         self.topic, p, applied[p], rec.start, seeded, rec.seconds)
        return out

    def _seed(self, store: PartitionStore, partition: int) -> int:
        n = self.send(partition, store.items())
        errors = self.flush(60.0)
        if errors:
            raise ChangelogError(f"seeding {self.topic}[{partition}] failed: {errors[:3]}")
        return n
