"""Record live topics into a recorded-stream file (the inverse of :mod:`streams.replay`).

Reads every partition of the given topics from the beginning up to the high
watermark that the broker reports *in fetch responses* (librdkafka's
partition-EOF), never from ``ListOffsets``: the embedded broker answers
``ListOffsets(latest)`` wrongly for multi-record batches.

Order: records that carry the replayer's ``ss-seq`` header are written in that
order, so a replayed file records back byte-identically; others follow by
(timestamp, topic, partition, offset).
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streams.replay import SEQ_HEADER, TS_HEADER
from streams.settings import Settings


def read_topics(settings: Settings, topics: Iterable[str], *, timeout_s: float = 60.0,
                idle_s: float = 2.0) -> list[tuple[str, int, Any]]:
    """All records of the logical ``topics``, as ``(logical_topic, partition, message)``."""
    names = {settings.topic(t): t for t in topics}
    consumer = Consumer(settings.consumer_config(group=f"{settings.app_id}-record-{time.time_ns()}",
                                                 **{"enable.partition.eof": True}))
    try:
        meta = consumer.list_topics(timeout=10)
        tps = []
        for actual in names:
            if actual not in meta.topics:
                raise ValueError(f"topic {actual!r} does not exist")
            tps += [TopicPartition(actual, p, OFFSET_BEGINNING) for p in meta.topics[actual].partitions]
        consumer.assign(tps)
        open_parts = {(tp.topic, tp.partition) for tp in tps}
        out: list[tuple[str, int, Any]] = []
        deadline = time.monotonic() + timeout_s
        last_msg = time.monotonic()
        while open_parts and time.monotonic() < deadline:
            msgs = consumer.consume(10000, 0.2)
            if not msgs and time.monotonic() - last_msg > idle_s:
                break
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        open_parts.discard((m.topic(), m.partition()))
                        continue
                    raise RuntimeError(f"consume failed: {err}")
                last_msg = time.monotonic()
                out.append((names[m.topic()], m.partition(), m))
        return out
    finally:
        consumer.close()


def _header(m: Any, name: str) -> bytes | None:
    for k, v in m.headers() or ():
        if k == name:
            return v
    return None


def record(settings: Settings, topics: Iterable[str], out: str | Path, **kw: Any) -> int:
    """Write the records of ``topics`` to ``out`` (``.gz`` compresses); returns the count."""
    rows = []
    for logical, partition, m in read_topics(settings, topics, **kw):
        seq = _header(m, SEQ_HEADER)
        ts = _header(m, TS_HEADER)
        ts_ms = int(ts) if ts is not None else m.timestamp()[1]
        order = (0, int(seq), 0, 0, 0) if seq is not None else (1, ts_ms, logical, partition, m.offset())
        rows.append((order, logical, m.key(), ts_ms, m.value()))
    rows.sort(key=lambda r: r[0])
    path = Path(out)
    fh: IO[bytes] = gzip.GzipFile(path, "wb", mtime=0) if path.suffix == ".gz" else path.open("wb")
    with fh:
        for _, logical, key, ts_ms, value in rows:
            fh.write(orjson.dumps({
                "topic": logical,
                "key": key.decode("utf-8", "replace") if key is not None else None,
                "ts": ts_ms,
                "value": orjson.Fragment(value if value is not None else b"null"),
            }))
            fh.write(b"\n")
    return len(rows)
