"""Partitions lost, not revoked: a worker that may have been expelled writes no state.

The worker-level case (a paused worker expelled from its group, woken up) is
tests/faults/test_zombie.py; these tests pin the scorer's side against the
real broker, with the group lease (streams._faust_hooks.GroupLease) replaced
by a flag: while the lease is out a flush sends nothing to the changelog and
writes nothing locally, and losing the partitions then drops their unflushed
state instead of flushing it. An ordinary close, lease valid, flushes.
"""

from __future__ import annotations

import asyncio

import pytest

from streams.agents import BatchScorer
from streams.changelog import COMMIT_MARKER, create_changelog_topic
from streams.spec import load_spec
from streams.state import PartitionStore
from tests.faults.harness import changelog_records
from tests.unit.test_agents import events

pytestmark = pytest.mark.integration


def _changelog(s) -> list[tuple[bytes, dict[str, bytes]]]:
    """(key, headers) of every record of the pipeline's changelog partition 0, in order."""
    return [(key, h) for _, key, h in changelog_records(s, 1)[0]]


@pytest.fixture
def setup(make_settings):
    s = make_settings(pipeline="elec2", snapshot_key="k" * 32).model_copy(update={"commit_interval_s": 3600.0})
    create_changelog_topic(s, "elec2")
    member = {"ok": True}
    scorer = BatchScorer(s, load_spec("elec2"))
    scorer.lease = lambda: member["ok"]
    scorer.generation = lambda: 7
    yield s, scorer, member
    scorer.close()


def test_a_flush_waits_for_the_lease_and_losing_the_partition_drops_it(setup) -> None:
    s, scorer, member = setup
    topic = s.topic("events")

    async def main() -> None:
        await scorer.handle(topic, 0, events(0, 20))
        member["ok"] = False                        # a heartbeat went unanswered for a session timeout
        scorer._last_flush = float("-inf")
        scorer.start_flush()
        job = scorer._inflight
        for _ in range(50):                         # it seals, then waits: nothing is sent
            await asyncio.sleep(0.002)
        assert scorer._inflight is job and scorer.processors[0].store.sealed
        scorer.lose([0])                            # then the group says: not a member any more
        assert job.cancelled and scorer._inflight is None and scorer.processors == {}
        assert scorer._epochs == {}                 # its owner epoch goes with it
        assert scorer.metrics.registry.get_sample_value("streamscore_worker_partitions_lost_total") == 1
        for _ in range(5):
            await asyncio.sleep(0.002)

    asyncio.run(main())
    # no record and no flush marker: only the fence written when the partition was opened
    assert [(k, h["generation"]) for k, h in _changelog(s)] == [(COMMIT_MARKER, b"7")]
    store = PartitionStore(scorer.state_path(0))
    assert store.scan("p:") == []                   # and nothing written locally
    store.close()


def test_close_without_the_lease_writes_nothing_with_it_flushes(setup) -> None:
    s, scorer, member = setup
    topic = s.topic("events")
    asyncio.run(scorer.handle(topic, 0, events(0, 10)))
    member["ok"] = False
    scorer.close([0])                               # a revocation (or shutdown) after an expulsion
    assert [k for k, _ in _changelog(s)] == [COMMIT_MARKER]     # the fence of the opening, nothing since
    assert scorer.processors == {}

    member["ok"] = True                             # the same records again, still a member
    asyncio.run(scorer.handle(topic, 0, events(0, 10)))
    scorer.close([0])
    records = _changelog(s)
    markers = [h for k, h in records if k == COMMIT_MARKER]
    assert len(markers) == 3 and len(records) > 10 and records[-1][0] == COMMIT_MARKER   # 2 fences, 1 flush
    assert all(h["generation"] == b"7" and h["writer"] == scorer.worker_id.encode() for h in markers)
    assert [h["epoch"] for h in markers] == [b"1", b"2", b"2"]    # each opening fences; the flush is its epoch's
    store = PartitionStore(scorer.state_path(0))
    assert len(store.scan("p:")) == 10
    store.close()
