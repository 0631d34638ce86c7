"""BatchScorer without a broker: what a batch that fails half-way leaves behind.

The producer is a stand-in that fails on a chosen record, the way a full
local queue (``BufferError`` twice) or a bug in an output would: the answers
already in the batch's pending state were never published, so none of that
state may reach the store, and no offset may be committed after it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from streams.agents import BatchFailed, BatchScorer
from streams.processor import Record
from streams.settings import Settings
from streams.spec import load_spec
from streams.state import PartitionStore


class FlakyProducer:
    """Accepts ``ok`` records, then raises on the next one."""

    def __init__(self, ok: int) -> None:
        self.ok = ok
        self.sent: list[bytes] = []        # values, in order
        self.topics: list[str] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None, partition: int = -1) -> None:
        if len(self.sent) >= self.ok:
            raise RuntimeError("output refused")
        self.sent.append(value)
        self.topics.append(topic)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:           # records waiting for delivery (confluent_kafka.Producer's len)
        return 0


def events(start: int, n: int) -> list[Record]:
    return [Record(start + i, b"nsw", orjson.dumps(
        {"event_id": f"e{start + i}", "ts": 1_000 + start + i, "period": 0.5, "nswprice": 0.05,
         "nswdemand": 0.4, "vicprice": 0.003, "vicdemand": 0.42, "transfer": 0.41}), 1_000)
        for i in range(n)]


def test_a_batch_failing_half_way_writes_no_state_and_stops_commits(tmp_path: Path) -> None:
    s = Settings(state_dir=tmp_path, changelog=False, metrics_port=0, snapshot_key="k" * 32)
    producer = FlakyProducer(ok=15)
    scorer = BatchScorer(s, load_spec("elec2"), producer=producer)  # type: ignore[arg-type]
    topic = s.topic("events")

    asyncio.run(scorer.handle(topic, 0, events(0, 10)))
    scorer.flush()                                      # the first 10 answers: published, then stored
    with pytest.raises(RuntimeError, match="output refused"):
        asyncio.run(scorer.handle(topic, 0, events(10, 10)))   # 5 published, then the producer fails
    assert len(producer.sent) == 15

    with pytest.raises(BatchFailed):                    # faust's commit calls this first: no commit
        scorer.flush()
    scorer.close()                                      # a stop after the failure writes nothing either

    store = PartitionStore(scorer.state_path(0))
    stored = {k for k, _ in store.scan("p:")}
    assert stored == {f"p:e{i}" for i in range(10)}, sorted(stored)
    store.close()


def test_a_failed_scorer_answers_no_later_batch(tmp_path: Path) -> None:
    """After a failure the worker is stopping, but faust may hand it another fetched batch first.

    That batch must not reopen the partition from the last committed state and
    answer from it: those answers (a model that never learned the failed
    batches' labels) would be published, and they differ from the answers the
    restarted worker gives. It raises, publishes nothing, and opens nothing.
    """
    s = Settings(state_dir=tmp_path, changelog=False, metrics_port=0, snapshot_key="k" * 32)
    producer = FlakyProducer(ok=15)
    scorer = BatchScorer(s, load_spec("elec2"), producer=producer)  # type: ignore[arg-type]
    topic = s.topic("events")
    asyncio.run(scorer.handle(topic, 0, events(0, 10)))
    scorer.flush()
    with pytest.raises(RuntimeError, match="output refused"):
        asyncio.run(scorer.handle(topic, 0, events(10, 10)))
    producer.ok = 10**9                                 # the broker is back
    with pytest.raises(BatchFailed):
        asyncio.run(scorer.handle(topic, 0, events(20, 10)))
    assert len(producer.sent) == 15 and scorer.processors == {}
    asyncio.run(scorer.open_partitions([0]))            # an assignment now opens nothing either
    assert scorer.processors == {}
    scorer.close()


def test_a_healthy_scorer_stores_what_it_published(tmp_path: Path) -> None:
    """The control: the same batches with a producer that never fails are all stored."""
    s = Settings(state_dir=tmp_path, changelog=False, metrics_port=0, snapshot_key="k" * 32)
    producer = FlakyProducer(ok=10**9)
    scorer = BatchScorer(s, load_spec("elec2"), producer=producer)  # type: ignore[arg-type]
    topic = s.topic("events")
    for start in (0, 10):
        asyncio.run(scorer.handle(topic, 0, events(start, 10)))
    scorer.close()
    store = PartitionStore(scorer.state_path(0))
    assert {orjson.loads(v)["event_id"] for _, v in store.scan("p:")} == {f"e{i}" for i in range(20)}
    published = [v for t, v in zip(producer.topics, producer.sent) if t == s.topic("predictions")]
    assert sorted(published) == sorted(v for _, v in store.scan("p:"))
    store.close()


def test_a_partition_is_opened_once_and_after_a_standby_refresh_of_it(tmp_path: Path) -> None:
    """Concurrent opens share one recovery; an open waits for a standby refresh of the same partition."""
    s = Settings(state_dir=tmp_path, changelog=False, metrics_port=0, snapshot_key="k" * 32)
    scorer = BatchScorer(s, load_spec("elec2"), producer=FlakyProducer(ok=10**9))  # type: ignore[arg-type]
    calls: list[list[int]] = []
    real = scorer.open_stores

    def counting(partitions):  # type: ignore[no-untyped-def]
        calls.append(sorted(partitions))
        return real(partitions)

    scorer.open_stores = counting  # type: ignore[method-assign]

    async def scenario() -> None:
        refresh = asyncio.get_running_loop().create_future()
        scorer._track([0], refresh)                      # a standby refresh of partition 0 is running
        opening = asyncio.ensure_future(scorer.open_partitions([0]))
        await asyncio.sleep(0.05)
        assert not opening.done() and 0 not in scorer.processors and calls == []
        refresh.set_result({})                           # the refresh closes its copy ...
        await opening                                    # ... and only then is the partition opened
        assert calls == [[0]] and 0 in scorer.processors
        await asyncio.gather(scorer.open_partitions([1]), scorer.open_partitions([1, 0]))
        assert calls == [[0], [1]]                       # one recovery for partition 1, none again for 0
        await scorer.opened([0, 1])

    asyncio.run(scenario())
    scorer.close()


def test_an_owner_waits_for_a_store_locked_elsewhere(tmp_path: Path) -> None:
    """A standby (another worker process on this state directory) holding the store's lock delays an open."""
    import threading

    s = Settings(state_dir=tmp_path, changelog=False, metrics_port=0, snapshot_key="k" * 32)
    scorer = BatchScorer(s, load_spec("elec2"), producer=FlakyProducer(ok=10**9))  # type: ignore[arg-type]
    holder = PartitionStore(scorer.state_path(0))
    with pytest.raises(Exception, match="(?i)lock"):
        scorer._open_local(0, timeout=0.3)               # never released: the lock error after the deadline
    threading.Timer(0.3, holder.close).start()
    store = scorer._open_local(0, timeout=10)            # released while waiting: opened
    store.close()


@pytest.mark.parametrize("interval, flushed", [(0.05, True), (60.0, False)])
def test_the_scorer_flushes_on_its_own_clock(tmp_path: Path, interval: float, flushed: bool) -> None:
    """Every ``commit_interval_s`` a batch ends with a flush, whether or not faust has committed.

    Why: faust's commit timer slips behind its interval while a commit waits on
    the broker, and a flush holds up scoring for time proportional to what it
    carries; flushing on our own clock keeps each flush small (p99 latency).
    """
    s = Settings(state_dir=tmp_path, changelog=False, metrics_port=0, snapshot_key="k" * 32,
                 commit_interval_s=interval)
    producer = FlakyProducer(ok=10**9)
    scorer = BatchScorer(s, load_spec("elec2"), producer=producer)  # type: ignore[arg-type]
    topic = s.topic("events")
    asyncio.run(scorer.handle(topic, 0, events(0, 10)))
    time.sleep(0.1)
    asyncio.run(scorer.handle(topic, 0, events(10, 10)))
    store = scorer.processors[0].store
    assert (store.pending == 0) is flushed, store.pending
    assert store.get("p:e15") is not None                # read through the cache either way
    scorer.close()


def test_a_torch_pipeline_warms_torch_up_before_any_partition_is_assigned(tmp_path: Path) -> None:
    """The first torch optimizer imports torch._dynamo (~1 s): the scorer pays it when built,
    so the first assignment does not stall the event loop. Checked in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from streams.agents import BatchScorer\n"
        "from streams.settings import Settings\n"
        "from streams.spec import load_spec\n"
        "assert 'torch._dynamo' not in sys.modules, 'imported before the scorer: the check would prove nothing'\n"
        f"s = Settings(state_dir={str(tmp_path)!r}, changelog=False, metrics_port=0, snapshot_key='k' * 32)\n"
        "BatchScorer(s, load_spec('elec2_deep'), producer=object())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True"


def test_metrics_snapshots_are_spread_over_the_interval_a_partition_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each partition's snapshot goes to the metrics topic once per ``metrics_interval_s``, on a grid
    offset per partition, so a batch publishes one or two of them, not all at once (which held the
    event loop for 10-16 ms every interval); after an idle spell the next batch publishes them all."""
    import streams.agents as agents

    now = [1000.0]
    monkeypatch.setattr(agents.time, "monotonic", lambda: now[0])
    s = Settings(state_dir=tmp_path, changelog=False, metrics_port=0, snapshot_key="k" * 32, metrics_interval_s=1.0)
    producer = FlakyProducer(ok=10**9)
    scorer = BatchScorer(s, load_spec("elec2"), producer=producer)  # type: ignore[arg-type]
    topic = s.topic("events")
    parts = range(4)
    for p in parts:
        asyncio.run(scorer.handle(topic, p, events(p * 1000, 2)))
    published: list[list[int]] = []              # the partitions of each batch's snapshots

    def snapshots() -> list[int]:
        docs = [orjson.loads(v) for v, t in zip(producer.sent, producer.topics) if t == s.topic("metrics")]
        producer.sent.clear(); producer.topics.clear()
        return sorted(d["partition"] for d in docs)

    snapshots()
    for i in range(1, 86):                       # a batch every 25 ms for 2.1 s, partitions in turn
        now[0] += 0.025
        asyncio.run(scorer.handle(topic, i % 4, events(5000 + i, 1)))
        published.append(snapshots())
    counts = {p: sum(b.count(p) for b in published) for p in parts}
    assert counts == {p: 2 for p in parts}       # each once a second
    assert max(len(b) for b in published) == 1   # never two partitions in one batch here
    now[0] += 10.0                               # idle for 10 s: all of them are due
    asyncio.run(scorer.handle(topic, 0, events(9000, 1)))
    assert snapshots() == [0, 1, 2, 3]
    scorer.close([2, 3])                         # revoked: their grid points go with them
    assert sorted(scorer._next_metrics) == [0, 1]
    scorer.close()
