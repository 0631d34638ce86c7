"""What a worker produces is compressed on the wire (``Settings.compression``), and reads back the same.

Why it matters: a prediction carries its features (~1 KB of JSON for the
benchmark pipeline) and is written twice, to the predictions topic and, as the
stored answer to a redelivery, to the state changelog. The embedded broker's
cost is per byte, and it shares the worker's machine here (BENCHMARKS.md,
"Compressed outputs"). These tests read the topics back with librdkafka and
compare the bytes the broker sent (its statistics) with the bytes of the
records: a codec that is dropped from a producer's config shows up here.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streams.agents import BatchScorer
from streams.changelog import create_changelog_topic
from streams.settings import Settings
from streams.spec import load_spec
from tests.unit.test_agents import events

pytestmark = pytest.mark.integration

N = 3_000


def _read(s: Settings, topic: str) -> tuple[list[tuple[bytes | None, bytes]], int]:
    """(key, value) of every record of partition 0 of ``topic``, and the bytes the broker sent for them."""
    stats: list[str] = []
    c = Consumer(s.consumer_config(group=f"{s.app_id}-read-{time.time_ns()}", **{
        "enable.partition.eof": True, "statistics.interval.ms": 100, "stats_cb": stats.append,
        "fetch.wait.max.ms": 10}))
    out: list[tuple[bytes | None, bytes]] = []
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 30
        done = False
        while not done and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if m.error() is not None:
                    done |= m.error().code() == KafkaError._PARTITION_EOF
                    continue
                out.append((m.key(), m.value()))
        assert done, f"{topic}: not read to its end"
        seen = len(stats)
        while len(stats) == seen and time.monotonic() < deadline:
            c.poll(0.05)                   # one more statistics report, after the last fetch
    finally:
        c.close()
    brokers = json.loads(stats[-1])["brokers"].values()
    return out, sum(b["rxbytes"] for b in brokers if b.get("nodeid", -1) >= 0)


def _run(make_settings, codec: str) -> dict[str, tuple[list[tuple[bytes | None, bytes]], int]]:
    s = make_settings(pipeline="elec2", compression=codec, snapshot_key="k" * 32)
    create_changelog_topic(s, "elec2")
    scorer = BatchScorer(s, load_spec("elec2"))
    scorer.lease = lambda: True
    scorer.generation = lambda: 1
    asyncio.run(scorer.handle(s.topic("events"), 0, events(0, N)))
    scorer.close()                         # flushes: outputs delivered, then the changelog
    return {"predictions": _read(s, s.topic("predictions")), "changelog": _read(s, s.changelog_topic("elec2"))}


def test_outputs_and_changelog_are_compressed_and_read_back_unchanged(make_settings) -> None:
    runs = {codec: _run(make_settings, codec) for codec in ("none", "zstd", "lz4")}
    for name in ("predictions", "changelog"):
        plain = runs["none"][name][0]
        assert len(plain) >= N if name == "changelog" else len(plain) == N
        payload = sum(len(k or b"") + len(v) for k, v in plain)
        wire = {codec: runs[codec][name][1] for codec in runs}
        # uncompressed, the broker sends at least the records' bytes; compressed, well under half
        assert wire["none"] >= payload, (name, wire, payload)
        assert wire["zstd"] < payload / 2, (name, wire, payload)
        assert wire["lz4"] < payload / 2, (name, wire, payload)
        for codec in ("zstd", "lz4"):      # and a reader gets the same records back
            assert runs[codec][name][0] == plain, (name, codec)


def test_an_unknown_codec_is_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="compression"):
        Settings(compression="brotli")  # type: ignore[arg-type]
