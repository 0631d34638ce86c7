"""PartitionStore with a flush in flight: the sealed writes, the newer ones, and what each read sees.

A worker seals its stores' writes as one flush (``seal``), sends them to the
changelog while later batches write to a fresh set, then writes them
(``write_sealed``), or gives them back to the next flush (``unseal``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.state import PartitionStore


def test_reads_see_the_newest_layer_and_writes_go_to_disk_in_order(tmp_path: Path) -> None:
    s = PartitionStore(tmp_path / "p0")
    s.put("a", b"disk")
    s.put("gone", b"disk")
    s.flush()
    s.put("a", b"sealed")
    s.put("b", b"sealed")
    s.delete("gone")
    assert s.seal() == 3 and s.sealed
    s.put("b", b"new")
    s.put("c", b"new")
    s.delete("a")
    assert (s.get("a"), s.get("b"), s.get("c"), s.get("gone")) == (None, b"new", b"new", None)
    assert s.scan("") == [("b", b"new"), ("c", b"new")]
    assert s.pending == 6
    assert sorted(k for k, _ in s.sealed_items()) == [b"a", b"b", b"gone"]
    with pytest.raises(RuntimeError, match="in flight"):
        s.seal()
    with pytest.raises(RuntimeError, match="in flight"):
        s.flush()
    assert s.write_sealed() == 3 and not s.sealed
    assert s._db.get(b"a") == b"sealed" and s._db.get(b"gone") is None     # the sealed flush, on disk
    assert s.get("a") is None and s.get("b") == b"new"                      # the newer writes still win
    s.flush()
    assert dict(s.items()) == {b"b": b"new", b"c": b"new"}
    s.close()


def test_unseal_gives_the_writes_back_under_the_newer_ones(tmp_path: Path) -> None:
    s = PartitionStore(tmp_path / "p0")
    s.put("a", b"old")
    s.put("b", b"old")
    s.seal()
    s.put("b", b"new")
    s.unseal()
    assert not s.sealed and s.pending == 2
    assert dict(s.dirty_items()) == {b"a": b"old", b"b": b"new"}
    s.flush()
    assert (s.get("a"), s.get("b")) == (b"old", b"new")
    s.close()


def test_discard_drops_a_flush_in_flight_too(tmp_path: Path) -> None:
    s = PartitionStore(tmp_path / "p0")
    s.put("a", b"1")
    s.seal()
    s.put("b", b"2")
    s.discard()
    assert not s.sealed and s.pending == 0 and s.get("a") is None and s.get("b") is None
    s.close()
    s = PartitionStore(tmp_path / "p0")
    assert s.get("a") is None
    s.close()


def test_the_changelog_position_moves_with_the_sealed_flush(tmp_path: Path) -> None:
    s = PartitionStore(tmp_path / "p0", wal=False)
    s.set_changelog_offset(10)
    s.put("a", b"1")
    s.seal()
    s.stage_sealed(2)                      # a record and its commit marker were delivered
    s.put("b", b"2")                       # a later batch: not in that flush
    s.write_sealed()
    assert s.changelog_offset == 12
    s.close()


def test_a_sealed_flush_written_in_pieces_moves_the_changelog_position_with_its_last(tmp_path: Path) -> None:
    """``write_sealed(limit)``: the worker writes a big flush a piece at a time, between batches. Reads see
    the whole sealed set until the last piece; the changelog position is written with that piece, so a
    store closed half-way holds a prefix of the flush and the position before it (recovery replays the
    changelog from there)."""
    s = PartitionStore(tmp_path / "p0", wal=False)
    s.set_changelog_offset(10)
    for i in range(5):
        s.put(f"k{i}", b"sealed")
    s.seal()
    s.stage_sealed(6)                      # five records and a commit marker were delivered
    s.put("k0", b"new")                    # a later batch
    assert s.write_sealed(2) == 2 and s.sealed
    assert s.changelog_offset == 10
    assert [s.get(f"k{i}") for i in range(5)] == [b"new"] + [b"sealed"] * 4
    assert s.write_sealed(2) == 2 and s.sealed
    s._db.flush(True)                      # killed half-way, after RocksDB persisted what it had:
    s._db.close()                          # two pieces on disk, and the position before the flush
    s = PartitionStore(tmp_path / "p0", wal=False)
    assert s.changelog_offset == 10
    assert sorted(k for k, _ in s.items()) == [b"k0", b"k1", b"k2", b"k3"]
    s.close()


def test_the_last_piece_ends_the_flush_and_unseal_gives_a_partly_written_one_back(tmp_path: Path) -> None:
    s = PartitionStore(tmp_path / "p0", wal=False)
    s.set_changelog_offset(0)
    for i in range(3):
        s.put(f"k{i}", b"v")
    s.seal()
    s.stage_sealed(4)
    assert [s.write_sealed(2), s.write_sealed(2)] == [2, 1] and not s.sealed
    assert s.changelog_offset == 4
    s.put("a", b"1")
    s.put("b", b"1")
    s.seal()
    assert s.write_sealed(1) == 1
    s.unseal()                             # sending it failed after all: it becomes pending again
    assert not s.sealed and s.pending == 2
    assert s.flush() == 2 and dict(s.items())[b"b"] == b"1"
    s.close()
