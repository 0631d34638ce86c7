"""Replay a recorded stream into Kafka, as fast as possible or at ×speed.

Recorded-stream format (JSON Lines, optionally gzip; one record per line, in
time order)::

    {"topic": "events"|"labels"|..., "key": str, "ts": epoch_ms, "value": {...}}

``topic`` is the logical name; the actual topic is ``settings.topic(topic)``.
The value is produced as its exact JSON bytes from the file, and each record
carries ``ss-seq`` (its line number) and ``ss-ts`` (its ``ts``) headers so that :mod:`streams.record` can
restore the file's order across topics and partitions and write the stream
back byte-identically. The Kafka record timestamp is the wall-clock produce
time (end-to-end latency is measured from it); event time stays in the value.

>>> import io
>>> list(iter_lines(io.BytesIO(b'{"topic":"events","key":"k","ts":1,"value":{"a":1}}\\n')))[0][1]
b'{"a":1}'
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson
from confluent_kafka import Producer

from streams.settings import Settings

SEQ_HEADER = "ss-seq"   # line number in the recorded file
TS_HEADER = "ss-ts"     # the recorded "ts" (event time, epoch ms)


class ReplayError(ValueError):
    """A line of a recorded stream is not in the recorded-stream format."""


def open_stream(path: str | Path) -> IO[bytes]:
    """Open a recorded stream file, gzip or plain, for binary reading."""
    p = Path(path)
    with p.open("rb") as fh:
        magic = fh.read(2)
    return gzip.open(p, "rb") if magic == b"\x1f\x8b" else p.open("rb")


def _value_span(line: bytes) -> bytes:
    """The exact bytes of the ``value`` member of a recorded line (no re-encoding)."""
    i = line.find(b'"value":')
    if i < 0:
        raise ReplayError("no \"value\" member")
    body = line[i + 8:].rstrip()
    if not body.endswith(b"}"):
        raise ReplayError("line does not end with '}'")
    return body[:-1]


def iter_lines(fh: IO[bytes]) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Yield ``(record, value_bytes)`` per line; ``value_bytes`` are the file's own bytes."""
    for n, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ReplayError(f"line {n}: {exc}") from exc
        if not isinstance(rec, dict) or "topic" not in rec or "value" not in rec:
            raise ReplayError(f"line {n}: expected an object with 'topic', 'key', 'ts', 'value'")
        try:
            raw = _value_span(line)
            same = orjson.loads(raw) == rec["value"]
        except (ReplayError, orjson.JSONDecodeError):
            same = False
        if not same:  # the value is not the last member: produce its canonical encoding
            raw = orjson.dumps(rec["value"])
        yield rec, raw


def count_records(path: str | Path, topic: str | None = None) -> int:
    """Records in a stream file (of one logical topic, if given)."""
    needle = None if topic is None else b'"topic":"' + topic.encode() + b'"'
    with open_stream(path) as fh:
        return sum(1 for line in fh if line.strip() and (needle is None or needle in line))


def replay(path: str | Path, settings: Settings, *, speed: float | None = None,
           limit: int | None = None, topics: Iterable[str] | None = None,
           producer: Producer | None = None,
           progress: Callable[[int], None] | None = None) -> int:
    """Produce the records of ``path``; returns how many were produced.

    Parameters
    ----------
    speed
        ``None`` or ``0``: as fast as possible. ``x``: ``x`` times recorded time
        (``ts`` gaps divided by ``x``).
    topics
        Logical topics to replay (default: all in the file).
    progress
        Called with the number of records produced since the last call.
    """
    prod = producer or Producer(settings.producer_config(**{"client.id": f"{settings.app_id}-replay"}))
    wanted = set(topics) if topics is not None else None
    n = 0
    t0_wall = time.monotonic()
    t0_ts: int | None = None
    pending_progress = 0
    with open_stream(path) as fh:
        for seq, (rec, raw) in enumerate(iter_lines(fh)):
            if limit is not None and n >= limit:
                break
            logical = rec["topic"]
            if wanted is not None and logical not in wanted:
                continue
            if speed:
                ts = int(rec["ts"])
                t0_ts = ts if t0_ts is None else t0_ts
                due = t0_wall + (ts - t0_ts) / 1000.0 / speed
                delay = due - time.monotonic()
                if delay > 0:
                    prod.poll(0)
                    time.sleep(delay)
            key = rec.get("key")
            kb = key.encode() if isinstance(key, str) else None
            headers = [(SEQ_HEADER, str(seq).encode()), (TS_HEADER, str(int(rec["ts"])).encode())]
            while True:
                try:
                    prod.produce(settings.topic(logical), raw, kb, headers=headers)
                    break
                except BufferError:
                    prod.poll(0.05)
            n += 1
            pending_progress += 1
            if pending_progress >= 1000:
                prod.poll(0)
                if progress:
                    progress(pending_progress)
                pending_progress = 0
    prod.flush()
    if progress and pending_progress:
        progress(pending_progress)
    return n
