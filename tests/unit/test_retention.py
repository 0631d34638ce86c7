"""Dedupe retention (streams/retention.py) in a partition processor: state stays bounded, in event time.

Real elec2-shaped events through a PartitionProcessor on a real RocksDB
store, inline labels, a retention of 60 s of event time with events 1 s
apart: what a redelivery finds inside and past the retention, that state
stops growing on a long stream, and that a reopened processor (a restart)
expires the same ids as an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.processor import PartitionProcessor, Record
from streams.retention import CHUNK, DedupeRetention, bucket_of
from streams.spec import load_spec
from streams.state import PartitionStore

SPEC = load_spec("elec2")
TTL_MS = 60_000
STEP_MS = 1_000


def event(i: int) -> dict[str, Any]:
    return {"event_id": f"e{i}", "ts": 1_000_000 + i * STEP_MS, "period": (i % 48) / 48, "nswprice": 0.05,
            "nswdemand": 0.4 + 0.01 * (i % 5), "vicprice": 0.003, "vicdemand": 0.42, "transfer": 0.41}


def records(docs: list[dict[str, Any]], start: int) -> list[Record]:
    return [Record(start + k, b"nsw", orjson.dumps(d), 1_000) for k, d in enumerate(docs)]


def stream(lo: int, hi: int) -> list[dict[str, Any]]:
    """Events lo..hi-1, each followed by its label."""
    out: list[dict[str, Any]] = []
    for i in range(lo, hi):
        out += [event(i), {"event_id": f"e{i}", "ts": event(i)["ts"], "label": i % 2}]
    return out


def proc(path: Path) -> PartitionProcessor:
    return PartitionProcessor(SPEC, PartitionStore(path), 0, dedupe_ttl_ms=TTL_MS, snapshot_key=b"k" * 32)


def state_keys(p: PartitionProcessor, prefix: str) -> set[str]:
    return {k for k, _ in p.store.scan(prefix)}


def test_ids_are_forgotten_after_the_retention_and_state_stays_bounded(tmp_path: Path) -> None:
    p = proc(tmp_path / "s")
    sizes = []
    offset = 0
    for lo in range(0, 1_000, 100):
        batch = stream(lo, lo + 100)
        p.process("events", records(batch, offset))
        offset += len(batch)
        p.flush()
        sizes.append(len(p.store))
    held = {k[2:] for k in state_keys(p, "p:")}
    newest = 999
    # kept: at least the last TTL of event time; at most one bucket (TTL/16) more
    assert {f"e{i}" for i in range(newest - 59, newest + 1)} <= held
    assert len(held) <= 60 + 60 // 16 + 2, len(held)
    # every kept event is labelled: its stored prediction and nothing else (no open features, no marker)
    assert state_keys(p, "e:") == set() and state_keys(p, "y:") == set()
    assert max(sizes[3:]) - min(sizes[3:]) <= 10, sizes           # flat once a retention span is held

    # a redelivery inside the retention is answered from state; one past it is scored as new
    inside = p.process("events", records([event(990)], offset))
    assert p.last_stats.duplicates == 1 and p.last_stats.predictions == 0 and len(inside) == 1
    p.process("events", records([event(10)], offset + 1))
    assert p.last_stats.duplicates == 0 and p.last_stats.predictions == 1
    p.close()


def test_a_restart_expires_the_same_ids(tmp_path: Path) -> None:
    whole = proc(tmp_path / "whole")
    docs = stream(0, 400)
    whole.process("events", records(docs, 0))
    whole.flush()
    parts = proc(tmp_path / "parts")
    cut = 300                                         # 150 events, then a restart, then the rest
    parts.process("events", records(docs[:cut], 0))
    parts.flush()
    parts.close()
    parts = proc(tmp_path / "parts")
    parts.process("events", records(docs[cut:], cut))
    parts.flush()
    for prefix in ("p:", "e:", "y:", "x:", "w:"):
        assert state_keys(parts, prefix) == state_keys(whole, prefix), prefix
    whole.close()
    parts.close()


def test_retention_needs_a_positive_ttl() -> None:
    with pytest.raises(ValueError, match="ttl_ms > 0"):
        DedupeRetention(0, {}.get)


def test_without_retention_every_id_stays(tmp_path: Path) -> None:
    p = PartitionProcessor(SPEC, PartitionStore(tmp_path / "s"), 0, snapshot_key=b"k" * 32)
    p.process("events", records(stream(0, 300), 0))
    p.flush()
    assert len(state_keys(p, "p:")) == 300 and not state_keys(p, "x:")
    p.close()


def _run_retention(store: PartitionStore, n: int, flush_every: int, reopen_every: int = 0) -> list[str]:
    """n ids in one bucket (then one that expires it), flushing every ``flush_every``; the ids expired."""
    def make() -> DedupeRetention:
        return DedupeRetention(16_000, store.get, store.delete, scan=store.scan,
                               known={bucket_of(k) for k, _ in store.scan("x:")})
    r, gone = make(), []
    for i in range(n):
        gone += r.add(f"e{i}", 5)
        if (i + 1) % flush_every == 0:
            for k, v in r.take_dirty():
                store.put(k, v)
            store.flush()
            if reopen_every and (i + 1) % reopen_every == 0:
                r = make()
    for k, v in r.take_dirty():
        store.put(k, v)
    store.flush()
    return gone


def test_a_bucket_is_kept_in_fixed_chunks_whatever_the_flushes(tmp_path: Path) -> None:
    """A flush rewrites one partial chunk per bucket, not the bucket; the keys do not depend on flush times."""
    n = 2 * CHUNK + 300
    states = []
    for i, (every, reopen) in enumerate([(n, 0), (7, 0), (100, 350)]):
        store = PartitionStore(tmp_path / f"s{i}")
        assert _run_retention(store, n, every, reopen) == []
        states.append(dict(store.items()))
        store.close()
    assert states[0] == states[1] == states[2]
    chunks = {k: orjson.loads(v) for k, v in states[0].items() if k.startswith(b"x:")}
    assert [len(v) for _, v in sorted(chunks.items())] == [CHUNK, CHUNK, 300]
    assert [x for _, v in sorted(chunks.items()) for x in v] == [f"e{i}" for i in range(n)]


def test_an_expired_chunked_bucket_gives_back_every_id_once(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "s")
    n = CHUNK + 10
    _run_retention(store, n, 100, reopen_every=500)
    r = DedupeRetention(16_000, store.get, store.delete, scan=store.scan,
                        known={bucket_of(k) for k, _ in store.scan("x:")})
    r.add("late-comer", 6)                         # same bucket, in memory only
    gone = r.add("new", 40_000)                     # the watermark passes bucket 0's end + ttl
    assert gone == [f"e{i}" for i in range(n)] + ["late-comer"]
    for k, v in r.take_dirty():
        store.put(k, v)
    store.flush()
    assert [k for k, _ in store.scan("x:0:")] == []
    store.close()


def test_a_label_whose_event_never_comes_is_forgotten_too(tmp_path: Path) -> None:
    """A pending label (``l:``) expires with the retention, in the label's event time."""
    p = proc(tmp_path / "s")
    orphan = {"event_id": "ghost", "ts": event(5)["ts"], "label": 1}
    p.process("events", records([orphan], 0))
    p.flush()
    assert state_keys(p, "l:") == {"l:ghost"}
    docs = stream(0, 120)                             # 120 s of event time: past ts + 60 s + a bucket
    p.process("events", records(docs, 1))
    p.flush()
    assert state_keys(p, "l:") == set()
    # and a label whose event does come is joined, not forgotten, inside the retention
    early = {"event_id": "e200", "ts": event(200)["ts"], "label": 0}
    p.process("events", records([early, event(200)], 1 + len(docs)))
    assert p.last_stats.labels_joined + p.last_stats.labels_pending >= 1
    p.flush()
    assert state_keys(p, "l:") == set() and "p:e200" in state_keys(p, "p:") and state_keys(p, "e:") == set()
    p.close()
