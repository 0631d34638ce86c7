"""The commit order, wired: faust commits a batch's offsets only after the flush that covers it.

docs/reliability.md section 3: a batch's offsets reach faust's bookkeeping
(``_faust_hooks`` with ``defer_acks``) only when the flush that covers it has
delivered its outputs and changelog records and written the local state;
faust then commits them. These tests drive faust's own ``force_commit`` on the
worker's app with no broker (the committable offsets faust computes are
recorded instead of sent) and check: nothing is committable before the flush,
exactly the flushed batches after it, a failed flush acknowledges nothing and
fails the next commit, and the batches that follow a sealed flush go on while
it is sent and wait for the next flush. A faust upgrade that changed how acked
offsets become commits fails here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from streams.agents import BatchFailed, _Flush
from streams.app import create_app
from streams.settings import Settings
from streams.spec import load_spec
from streams.state import PartitionStore
from tests.unit.test_agents import FlakyProducer, events


class Undelivered(FlakyProducer):
    """Accepts every record and never delivers any (a broker that does not answer)."""

    def __init__(self) -> None:
        super().__init__(ok=10**9)

    def flush(self, timeout: float = 0) -> int:
        return len(self.sent)

    def __len__(self) -> int:
        return len(self.sent)


class Slow(FlakyProducer):
    """Accepts every record; delivers none while ``waiting``, then all of them."""

    def __init__(self) -> None:
        super().__init__(ok=10**9)
        self.waiting = True

    def __len__(self) -> int:
        return 1 if self.waiting else 0


def _app(tmp_path: Path, producer: Any, interval: float = 3600.0) -> tuple[Any, list[dict[Any, int]]]:
    s = Settings(state_dir=tmp_path, broker="127.0.0.1:1", metrics_port=0, snapshot_key="k" * 32,
                 changelog=False, commit_interval_s=interval)
    app = create_app(s, load_spec("elec2"))
    app.scorer._producer = producer
    commits: list[dict[Any, int]] = []

    async def commit_tps(tps: Any, start_new_transaction: bool) -> bool:
        commits.append({(tp.topic, tp.partition): o for tp, o in
                        app.consumer._filter_committable_offsets(tps).items()})
        return True

    app.consumer._commit_tps = commit_tps
    return app, commits


def test_offsets_are_committable_only_after_the_flush_that_covers_them(tmp_path: Path) -> None:
    app, commits = _app(tmp_path, FlakyProducer(ok=10**9))
    scorer, topic = app.scorer, app.scorer._topics["events"]
    on_disk: list[bool] = []
    ack = scorer.acker

    def checking_ack(t: str, p: int, offsets: list[int]) -> None:   # the state is written by then
        on_disk.append(scorer.processors[p].store._db.get(f"p:e{offsets[-1]}".encode()) is not None)
        ack(t, p, offsets)

    scorer.acker = checking_ack

    async def main() -> None:
        await scorer.handle(topic, 0, events(0, 10))
        await app.consumer.force_commit()
        scorer.flush()
        await app.consumer.force_commit()

    asyncio.run(main())
    assert commits == [{}, {(topic, 0): 10}]
    assert on_disk == [True]


def test_undelivered_outputs_acknowledge_nothing_and_stop_the_worker(tmp_path: Path) -> None:
    """An output the broker never took is lost: nothing more is committed or written, and the
    restarted worker answers those records again from the last committed state."""
    producer = Undelivered()
    app, commits = _app(tmp_path, producer, interval=0.01)
    scorer, topic = app.scorer, app.scorer._topics["events"]

    async def main() -> None:
        await scorer.handle(topic, 0, events(0, 10))
        await asyncio.sleep(0.02)
        await scorer.handle(topic, 0, events(10, 5))           # starts the flush of both batches
        while scorer._inflight is not None:                    # it waits, then flushes and gives up
            await asyncio.sleep(0.005)
        with pytest.raises(BatchFailed):
            await app.consumer.force_commit()
        with pytest.raises(BatchFailed):
            scorer.flush()

    asyncio.run(main())
    assert commits == [] and len(producer.sent) == 15
    scorer.close()
    store = PartitionStore(scorer.state_path(0))
    assert store.scan("p:") == []                              # no answer stored that was not published
    store.close()


def test_batches_go_on_while_a_flush_is_in_flight(tmp_path: Path) -> None:
    producer = Slow()
    app, commits = _app(tmp_path, producer)
    scorer, topic = app.scorer, app.scorer._topics["events"]

    async def main() -> None:
        await scorer.handle(topic, 0, events(0, 10))
        await scorer.handle(topic, 0, events(10, 10))
        scorer._last_flush = float("-inf")                     # a flush is due
        scorer.start_flush()
        job, store = scorer._inflight, scorer.processors[0].store
        assert job is not None and not store.sealed
        await asyncio.sleep(0)                                 # its first step seals both batches
        assert store.sealed and scorer._inflight is job        # and it waits on the broker
        await scorer.handle(topic, 0, events(20, 10))          # answered meanwhile, into a fresh set
        assert store.get("p:e5") is not None and store.get("p:e25") is not None
        await app.consumer.force_commit()                      # nothing is covered yet
        producer.waiting = False
        while scorer._inflight is job:
            await asyncio.sleep(0.001)
        await app.consumer.force_commit()                      # the flush covers the first 20 records
        scorer.flush()
        await app.consumer.force_commit()

    asyncio.run(main())
    assert commits == [{}, {(topic, 0): 20}, {(topic, 0): 30}]


@pytest.mark.parametrize("backlog", [False, True])
def test_a_flush_past_its_time_writes_in_pieces_only_while_the_worker_keeps_up(
        tmp_path: Path, backlog: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its deadline a flush no longer waits on the broker, but while the worker keeps up it still
    yields between pieces of its RocksDB writes (``_Flush.CHUNK`` keys each): written at once, they
    held the event loop for 20-30 ms every flush at half of peak. Under a backlog a yield lets a
    whole fetch round in, so the rest is written in one step, as before."""
    app, commits = _app(tmp_path, FlakyProducer(ok=10**9))
    scorer, topic = app.scorer, app.scorer._topics["events"]
    writes: list[tuple[int, int]] = []          # (step, keys) of each RocksDB batch
    step = 0
    real = PartitionStore._write_batch

    def counting(self: PartitionStore, batch: Any, staged: Any) -> int:
        writes.append((step, len(batch)))
        return real(self, batch, staged)

    monkeypatch.setattr(PartitionStore, "_write_batch", counting)

    async def main() -> None:
        nonlocal step
        for p in (0, 1):
            await scorer.handle(topic, p, events(p * 10_000, 1_300))
        scorer.lag = {("events", 0): 10**6 if backlog else 10, ("events", 1): 0}
        job = scorer._begin(None)
        job.deadline = float("-inf")              # it has had its time
        while job.step() is not None:
            step += 1
        await app.consumer.force_commit()

    asyncio.run(main())
    sizes = [n for _, n in writes]
    assert sum(sizes) >= 2 * 1_300 and max(sizes) <= _Flush.CHUNK
    steps = {s for s, _ in writes}
    if backlog:
        assert len(steps) == 1                    # every piece in one step
    else:
        assert len(steps) == len(writes) >= 6     # a piece a step
    assert commits == [{(topic, 0): 1_300, (topic, 1): 10_000 + 1_300}]
