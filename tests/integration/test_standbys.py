"""Standby replicas against the real broker: a worker follows the partitions dealt to it, and no others.

The group leader deals ``standby_replicas`` copies of each partition to
workers other than its owner (streams/assignment.py, unit-tested in
tests/unit/test_assignment.py); the worker passes the partitions dealt to
it to :meth:`BatchScorer.refresh_standbys`. Here one scorer owns three
partitions and writes their changelogs; a second scorer, with a state
directory of its own (another machine), is dealt partition 1 only.
"""

from __future__ import annotations

import asyncio

import pytest

from streams.agents import BatchScorer
from streams.changelog import create_changelog_topic
from streams.spec import load_spec
from streams.state import PartitionStore
from tests.unit.test_agents import events

pytestmark = pytest.mark.integration


def test_a_worker_keeps_standby_copies_of_the_partitions_dealt_to_it_only(make_settings, tmp_path) -> None:
    s = make_settings(pipeline="elec2", partitions=3, snapshot_key="k" * 32)
    create_changelog_topic(s, "elec2")
    owner = BatchScorer(s, load_spec("elec2"))
    for p in range(3):
        asyncio.run(owner.handle(s.topic("events"), p, events(100 * p, 20)))
    owner.flush()

    other = BatchScorer(s.model_copy(update={"state_dir": tmp_path / "other"}), load_spec("elec2"))
    try:
        applied = asyncio.run(other.refresh_standbys([1]))
        assert set(applied) == {1} and applied[1] > 0
        assert [p for p in range(3) if other.state_path(p).exists()] == [1]
        assert other.metrics.registry.get_sample_value("streamscore_state_standby_partitions") == 1
        copy = PartitionStore(other.state_path(1))
        mine = owner.processors[1].store
        theirs = dict(mine.items())
        assert dict(copy.items()) == theirs and len(theirs) > 0
        copy.close()
        assert asyncio.run(other.refresh_standbys([])) == {}       # dealt none: follows none
        assert other.metrics.registry.get_sample_value("streamscore_state_standby_partitions") == 0
    finally:
        other.close()
        owner.close()


def test_a_worker_sharing_the_owner_s_state_directory_copies_nothing(make_settings) -> None:
    """Workers of ``streamscore worker --workers N`` share one state directory: a standby there is the
    owner's own store, held open, so a refresh skips it: no changelog read, no record applied (why two
    workers on one machine pay nothing for standbys: BENCHMARKS.md, "Two workers on one machine")."""
    s = make_settings(pipeline="elec2", partitions=2, snapshot_key="k" * 32)
    create_changelog_topic(s, "elec2")
    owner = BatchScorer(s, load_spec("elec2"))
    asyncio.run(owner.handle(s.topic("events"), 1, events(0, 20)))
    owner.flush()
    sibling = BatchScorer(s, load_spec("elec2"))       # the same settings: the same state directory
    try:
        assert asyncio.run(sibling.refresh_standbys([1])) == {}
        assert sibling.metrics.registry.get_sample_value("streamscore_state_standby_applied_records_total") == 0
        before = dict(owner.processors[1].store.items())
        owner.close()                       # the owner gone (its partition moved): now the sibling opens it
        assert asyncio.run(sibling.refresh_standbys([1])) == {1: 0}    # the owner's own copy: complete
        copy = PartitionStore(sibling.state_path(1))
        assert dict(copy.items()) == before and len(before) > 0
        copy.close()
    finally:
        sibling.close()
        owner.close()
