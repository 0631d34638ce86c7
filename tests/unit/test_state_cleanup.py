"""Local copies of partitions that moved away are deleted, never one that is in use.

A worker keeps a RocksDB store per partition it owned or followed as a
standby. ``BatchScorer.remove_stale`` deletes those not owned or dealt to it
and unused for ``state_cleanup_delay_s`` (Kafka Streams'
``state.cleanup.delay.ms``); ``streams.state.remove_unused`` does the deleting
under RocksDB's own lock, so a store another process has open (workers
sharing a state directory) is never deleted, and one being deleted cannot be
opened meanwhile. Real RocksDB stores, real processes.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.agents import BatchScorer
from streams.settings import Settings
from streams.spec import load_spec
from streams.state import PartitionStore, remove_unused
from tests.unit.test_agents import FlakyProducer

HOLD = "from streams.state import PartitionStore; import sys, time; s = PartitionStore(sys.argv[1]); " \
       "print('open', flush=True); sys.stdin.readline(); s.close()"


def _store(path: Path, age_s: float = 0.0) -> Path:
    s = PartitionStore(path)
    s.put("k", b"v")
    s.close()
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


def test_a_store_open_in_another_process_is_kept_and_deleted_once_closed(tmp_path: Path) -> None:
    path = _store(tmp_path / "events-0")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        assert remove_unused(path) is False
        assert (path / "CURRENT").exists()          # nothing was moved from under the holder
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(30)
    assert holder.returncode == 0
    assert remove_unused(path) is True
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_a_store_being_deleted_cannot_be_opened_by_another_process(tmp_path: Path) -> None:
    """remove_unused's lock is the one RocksDB takes: an open elsewhere meanwhile fails with a lock error
    (which a worker waits out, or skips for a standby)."""
    path = _store(tmp_path / "events-0")
    fd = os.open(path / "LOCK", os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)    # what remove_unused holds while it renames
        r = subprocess.run([sys.executable, "-c", "import sys; from streams.state import PartitionStore; "
                            "PartitionStore(sys.argv[1])", str(path)], capture_output=True, text=True, timeout=60)
    finally:
        os.close(fd)
    assert r.returncode != 0 and "lock" in r.stderr.lower(), r.stderr[-500:]


def _scorer(tmp_path: Path, **kw) -> BatchScorer:
    s = Settings(state_dir=tmp_path, metrics_port=0, snapshot_key="k" * 32, **{"state_cleanup_delay_s": 600.0, **kw})
    return BatchScorer(s, load_spec("elec2"), producer=FlakyProducer(ok=10**9))  # type: ignore[arg-type]


def test_the_scorer_deletes_only_old_copies_of_partitions_it_neither_owns_nor_follows(tmp_path: Path) -> None:
    scorer = _scorer(tmp_path)
    try:
        moved = _store(scorer.state_path(1), age_s=601)       # went elsewhere 10 minutes ago
        dealt = _store(scorer.state_path(2), age_s=601)       # a standby copy dealt here
        recent = _store(scorer.state_path(3), age_s=30)       # closed half a minute ago
        other_pipeline = _store(scorer.state_path(4).with_name("other-4"), age_s=601)
        leftover = scorer.state_path(5).with_name(".events-5.removing-1-2")   # a deletion a crash cut short
        leftover.mkdir()
        assert asyncio.run(scorer.remove_stale(keep={2})) == [1]
        assert not moved.exists() and dealt.exists() and recent.exists() and other_pipeline.exists()
        assert not leftover.exists()
        assert scorer.metrics.registry.get_sample_value("streamscore_state_stores_removed_total") == 1
        assert sorted(scorer.local_copies()) == [2, 3]
        back = PartitionStore(moved)         # the partition comes back: a new, empty store (then recovered
        assert len(back) == 0                # from the changelog)
        back.close()
    finally:
        scorer.close()


def test_the_first_sweep_clears_a_half_deleted_copy_even_with_nothing_old(tmp_path: Path) -> None:
    scorer = _scorer(tmp_path)
    try:
        kept = _store(scorer.state_path(1), age_s=30)
        leftover = scorer.state_path(5).with_name(".events-5.removing-1-2")   # a deletion a crash cut short
        leftover.mkdir()
        assert asyncio.run(scorer.remove_stale(keep=set())) == []
        assert not leftover.exists() and kept.exists()
    finally:
        scorer.close()


@pytest.mark.parametrize("kw", [{"changelog": False}, {"state_cleanup_delay_s": 0.0}])
def test_no_copy_is_deleted_without_a_changelog_or_with_the_delay_at_zero(tmp_path: Path, kw: dict) -> None:
    """Without a changelog a local copy is the only copy of a partition's state."""
    scorer = _scorer(tmp_path, **kw)
    try:
        old = _store(scorer.state_path(1), age_s=10**6)
        assert asyncio.run(scorer.remove_stale(keep=set())) == []
        assert old.exists()
    finally:
        scorer.close()
