"""Record and replay round-trip byte-identically through the real broker."""

from __future__ import annotations

import gzip

import pytest

from streams.datasets import convert
from streams.record import record
from streams.replay import replay

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("dataset,partitions,limit", [("online_retail", 4, 3000), ("elec2", 1, 2000)])
def test_replay_then_record_is_byte_identical(make_settings, tmp_path, dataset, partitions, limit):
    s = make_settings(partitions=partitions)
    original = tmp_path / f"{dataset}.jsonl.gz"
    convert(dataset, original, limit=limit)
    assert replay(original, s) == limit
    back = tmp_path / "recorded.jsonl.gz"
    assert record(s, ["events", "labels"], back, timeout_s=30) == limit
    assert gzip.decompress(back.read_bytes()) == gzip.decompress(original.read_bytes())


def test_replay_at_speed_respects_recorded_time(make_settings, tmp_path):
    import time

    s = make_settings()
    f = tmp_path / "s.jsonl"
    f.write_bytes(b"".join(
        b'{"topic":"events","key":"k","ts":%d,"value":{"event_id":"e%d","ts":%d}}\n' % (1000 * i, i, 1000 * i)
        for i in range(5)))                      # 4 s of recorded time
    t0 = time.monotonic()
    assert replay(f, s, speed=8.0) == 5           # at 8x: about 0.5 s
    assert 0.45 <= time.monotonic() - t0 < 3.0


def test_record_reads_to_fetch_high_watermark_not_list_offsets(make_settings, tmp_path):
    """The embedded broker's ListOffsets(latest) is wrong after multi-record batches.

    Produce 15 records in one batch, then 7: Tansu answers ListOffsets(latest)
    with 16 (last batch base + 1), not 22. Reading must still return all 22.
    """
    from confluent_kafka import Producer

    s = make_settings()
    p = Producer(s.producer_config(**{"linger.ms": 100}))
    for batch in (15, 7):
        for i in range(batch):
            p.produce(s.topic("events"), b'{"event_id":"x","ts":1}', b"k")
        p.flush()
    out = tmp_path / "r.jsonl"
    assert record(s, ["events"], out, timeout_s=20) == 22
