"""The state changelog against the real broker: what a store writes, a store elsewhere gets back.

Each test writes through :class:`~streams.changelog.Changelog` the way a worker
does (send the pending writes, flush the producer, then write the local
store), then opens a *fresh* store in another directory (another machine, as
far as the state is concerned) and recovers it from the changelog.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streams.broker import create_topics
from streams.changelog import CHANGELOG_CONFIG, Changelog
from streams.state import CHANGELOG_OFFSET, PartitionStore

pytestmark = pytest.mark.integration


@pytest.fixture
def changelog(make_settings):
    s = make_settings(create=False, partitions=2)
    topic = s.changelog_topic("t")
    create_topics(s.broker, {topic: 2}, config=CHANGELOG_CONFIG)
    cl = Changelog(topic, s.producer_config(), s.consumer_config(group=f"{s.app_id}-restore"))
    yield cl
    cl.close()


def write(cl: Changelog, store: PartitionStore, partition: int, puts: dict[str, bytes],
          deletes: tuple[str, ...] = ()) -> None:
    """One worker flush: pending writes -> changelog -> delivered -> local store."""
    for k, v in puts.items():
        store.put(k, v)
    for k in deletes:
        store.delete(k)
    store.staged(cl.send(partition, store.dirty_items()))
    assert cl.flush(30) == []
    store.flush()


def contents(store: PartitionStore) -> dict[bytes, bytes]:
    return dict(store.items())


def test_a_fresh_store_recovers_puts_and_deletes(changelog: Changelog, tmp_path: Path) -> None:
    a = PartitionStore(tmp_path / "a")
    assert changelog.recover(a, 1).end == 0
    write(changelog, a, 1, {f"k{i}": f"v{i}".encode() for i in range(15)})
    write(changelog, a, 1, {"k3": b"again", "x": b"1"}, deletes=("k4", "k5"))
    write(changelog, a, 1, {f"k{i}": b"last" for i in range(10, 17)})   # 15 then 7 records: see below

    b = PartitionStore(tmp_path / "b")
    rec = changelog.recover(b, 1)
    assert contents(b) == contents(a)
    assert b"k4" not in contents(b) and contents(b)[b"k3"] == b"again"
    assert rec.applied == 15 + 4 + 7 and rec.end == 26 + 3 and b.changelog_offset == 29   # + a marker per flush
    # the other partition of the changelog is untouched
    c = PartitionStore(tmp_path / "c")
    assert changelog.recover(c, 0).applied == 0 and contents(c) == {}


def test_recovery_reads_to_the_fetch_high_watermark_not_list_offsets(changelog: Changelog, tmp_path: Path) -> None:
    """The embedded broker answers ListOffsets(latest) with the last *batch's* base offset + 1.

    Two multi-record batches (15, then 7 records, each followed by its commit
    marker): ListOffsets says 17, the log ends at 24. Recovery must read all
    24 (it stops at the partition-EOF event, whose offset is the fetch high
    watermark).
    """
    a = PartitionStore(tmp_path / "a")
    changelog.recover(a, 0)
    write(changelog, a, 0, {f"a{i:02d}": b"1" for i in range(15)})
    write(changelog, a, 0, {f"b{i:02d}": b"2" for i in range(7)})
    b = PartitionStore(tmp_path / "b")
    rec = changelog.recover(b, 0)
    assert (rec.applied, rec.end) == (22, 24)
    assert len(contents(b)) == 22


def test_a_stale_store_catches_up_from_its_own_offset(changelog: Changelog, tmp_path: Path) -> None:
    """A worker gets a partition back after another worker wrote to it: it reads only the new records."""
    a = PartitionStore(tmp_path / "a")
    changelog.recover(a, 0)
    write(changelog, a, 0, {"w": b"1", "p:1": b"x"})
    b = PartitionStore(tmp_path / "b")          # the partition moves to b
    changelog.recover(b, 0)
    write(changelog, b, 0, {"w": b"2", "p:2": b"y"}, deletes=("p:1",))
    rec = changelog.recover(a, 0)               # ... and back to a
    assert (rec.start, rec.applied) == (3, 3)   # 2 records + a marker, then 3 of b's
    assert contents(a) == contents(b) == {b"w": b"2", b"p:2": b"y"}


def test_an_undelivered_flush_writes_nothing_locally_and_is_sent_again(changelog: Changelog, tmp_path: Path) -> None:
    """Pending writes stay pending until delivered; the offset moves only with a successful flush."""
    a = PartitionStore(tmp_path / "a")
    changelog.recover(a, 0)
    a.put("k", b"1")
    a.staged(changelog.send(0, a.dirty_items()))
    # the flush "failed": the worker does not write the store; its next flush sends the key again
    a.put("k2", b"2")
    write(changelog, a, 0, {})
    assert a.changelog_offset == 3            # a lower bound: the log holds 2 + 3 records (markers included)
    b = PartitionStore(tmp_path / "b")
    assert changelog.recover(b, 0).end == 5
    assert contents(b) == contents(a) == {b"k": b"1", b"k2": b"2"}


def test_a_store_with_data_seeds_an_empty_changelog(changelog: Changelog, tmp_path: Path) -> None:
    a = PartitionStore(tmp_path / "a")          # written with changelogs off
    for i in range(50):
        a.put(f"k{i}", os.urandom(8))
    a.flush()
    rec = changelog.recover(a, 1)
    assert (rec.seeded, rec.end) == (51, 51)   # one flush: 50 keys and its marker
    b = PartitionStore(tmp_path / "b")
    changelog.recover(b, 1)
    assert contents(b) == contents(a) and len(contents(b)) == 50


def test_a_flush_cut_short_is_not_applied_and_the_next_owner_corrects_it(changelog: Changelog, tmp_path: Path) -> None:
    """A worker killed while its producer delivers a flush leaves part of it in the log, with no commit marker.

    Applied, that part would pair "event 2 is answered" with a model that never
    learned event 2 (one model's snapshot arrived, the other's did not). So no
    reader applies it; the partition's next owner rewrites its keys with the
    values of its consistent store, then a marker, and from then on every
    reader (a standby reading the tail again, a fresh store reading from 0)
    ends at the consistent state.
    """
    a = PartitionStore(tmp_path / "a")
    changelog.recover(a, 0)
    write(changelog, a, 0, {"p:1": b"answered", "m:lr": b"v1", "m:hat": b"v1"})
    consistent = {b"p:1": b"answered", b"m:lr": b"v1", b"m:hat": b"v1"}
    for k, v in ((b"p:2", b"answered"), (b"m:lr", b"v2")):     # the next flush, cut short
        changelog.producer.produce(changelog.topic, v, k, 0)
    assert changelog.flush(30) == []

    standby = PartitionStore(tmp_path / "standby")
    rec = changelog.recover(standby, 0, seed=False)
    assert contents(standby) == consistent
    assert (rec.unfinished, rec.seeded, rec.end) == (2, 0, 4)    # stays before the tail: reads it again next time

    owner = PartitionStore(tmp_path / "owner")        # the next owner (a's disk is gone)
    rec = changelog.recover(owner, 0)
    assert contents(owner) == consistent
    assert (rec.unfinished, rec.seeded, rec.end) == (2, 3, 9)    # p:2 deleted, m:lr back to v1, a marker

    rec = changelog.recover(standby, 0, seed=False)
    assert contents(standby) == consistent and (rec.start, rec.applied, rec.end) == (4, 4, 9)
    fresh = PartitionStore(tmp_path / "fresh")
    rec = changelog.recover(fresh, 0, seed=False)
    assert contents(fresh) == consistent and rec.unfinished == 0
    write(changelog, owner, 0, {"p:2": b"answered", "m:lr": b"v2", "m:hat": b"v2"})   # the owner goes on
    changelog.recover(fresh, 0, seed=False)
    assert contents(fresh) == contents(owner) == {b"p:1": b"answered", b"p:2": b"answered",
                                                  b"m:lr": b"v2", b"m:hat": b"v2"}


def test_a_store_cut_short_while_seeding_seeds_again(changelog: Changelog, tmp_path: Path) -> None:
    """A seed that never completed (no marker) counts as an empty log: the store is written again, whole."""
    a = PartitionStore(tmp_path / "a")
    for i in range(20):
        a.put(f"k{i}", b"v")
    a.flush()
    for i in range(5):                                       # the first 5 of a seed, then the worker died
        changelog.producer.produce(changelog.topic, b"v", f"k{i}".encode(), 1)
    assert changelog.flush(30) == []
    rec = changelog.recover(a, 1)
    assert (rec.unfinished, rec.seeded, rec.end) == (5, 5 + 20 + 1, 31)
    b = PartitionStore(tmp_path / "b")
    changelog.recover(b, 1, seed=False)
    assert contents(b) == contents(a) and len(contents(b)) == 20


def test_a_large_value_round_trips(changelog: Changelog, tmp_path: Path) -> None:
    """A model snapshot is one record: several MB must go through."""
    a = PartitionStore(tmp_path / "a")
    changelog.recover(a, 0)
    big = os.urandom(5_000_000)
    write(changelog, a, 0, {"m:model": big})
    b = PartitionStore(tmp_path / "b")
    changelog.recover(b, 0)
    assert b.get("m:model") == big


def test_the_offset_key_is_not_state(tmp_path: Path) -> None:
    s = PartitionStore(tmp_path / "s")
    s.set_changelog_offset(7)
    s.put("p:1", b"x")
    s.flush()
    assert s.scan("p:") == [("p:1", b"x")] and s.changelog_offset == 7
    assert dict(s.items()) == {b"p:1": b"x"} and CHANGELOG_OFFSET not in dict(s.items())


def test_a_missing_topic_is_a_clear_error(make_settings, tmp_path: Path) -> None:
    from streams.changelog import ChangelogError

    s = make_settings(create=False)
    cl = Changelog(s.changelog_topic("missing"), s.producer_config(), s.consumer_config())
    with pytest.raises(ChangelogError, match="has no partition 0"):
        cl.recover(PartitionStore(tmp_path / "a"), 0, timeout=20)



def test_streamscore_topics_creates_the_compacted_changelog(make_settings) -> None:
    """`streamscore topics` creates the pipeline's changelog too, compacted, a partition per input partition."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    from streams.cli import main

    s = make_settings(create=False, partitions=3)
    assert main(["topics", "--broker", s.broker, "--topic-prefix", s.topic_prefix, "--app-id", s.app_id,
                 "--pipeline", "elec2", "--partitions", "3"]) == 0
    admin = AdminClient({"bootstrap.servers": s.broker})
    topic = s.changelog_topic("elec2")
    meta = admin.list_topics(timeout=10).topics
    assert topic in meta and len(meta[topic].partitions) == 3
    assert s.topic("events") in meta
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([res])[res].result(timeout=10)
    assert configs["cleanup.policy"].value == "compact"


# -- fencing: a zombie's late flush (streams/changelog.py, "Fencing") ------------------------------
def flush_as(cl: Changelog, store: PartitionStore, partition: int, puts: dict[str, bytes],
             writer: str, epoch: int | None) -> None:
    """One flush of a worker that owns the partition with ``epoch`` (its recovery's)."""
    for k, v in puts.items():
        store.put(k, v)
    store.staged(cl.send(partition, store.dirty_items(), (writer, 1), epoch))
    assert cl.flush(30) == []
    store.flush()


def last_values(cl: Changelog, partition: int) -> dict[bytes, bytes]:
    """What a fully compacted log holds: each key's last record, markers and tombstones dropped."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from streams.changelog import COMMIT_MARKER
    c = Consumer({**cl._consumer_config, "enable.partition.eof": True})
    out: dict[bytes, bytes | None] = {}
    try:
        c.assign([TopicPartition(cl.topic, partition, 0)])
        while True:
            m = c.poll(10)
            assert m is not None, "changelog not read to its end"
            if m.error() is not None:
                assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                break
            if m.key() != COMMIT_MARKER:
                out[m.key()] = m.value()
    finally:
        c.close()
    return {k: v for k, v in out.items() if v is not None}


def test_a_zombies_late_flush_is_fenced_by_the_new_owner(changelog: Changelog, tmp_path: Path) -> None:
    """A flush of a lower epoch that lands after the new owner's fence is applied by no reader.

    Worker A owns the partition (epoch 1); it is expelled while paused and B
    takes over (epoch 2: its fence, then its flushes). A's flush that was on
    the wire lands after that. Applied, it would put A's stale model over B's.
    Every later reader (a standby, the next owner from an empty store) skips
    it, the next owner rewrites its keys, and what a compacted log would keep
    equals the owner's state. The group generations go *down* on the way
    (7, 8, then 1: the group was deleted and made again): the epochs, which
    the log itself numbers, do not.
    """
    a = PartitionStore(tmp_path / "a")
    assert changelog.recover(a, 0, origin=("A", 7)).epoch == 1
    flush_as(changelog, a, 0, {"p:1": b"answered", "m:lr": b"v1"}, "A", 1)

    b = PartitionStore(tmp_path / "b")                         # B takes over: read, fence, read on
    rec = changelog.recover(b, 0, origin=("B", 8))
    assert contents(b) == {b"p:1": b"answered", b"m:lr": b"v1"} and (rec.fenced, rec.epoch) == (0, 2)
    assert b.changelog_fence == 2
    flush_as(changelog, b, 0, {"p:2": b"answered", "m:lr": b"v2"}, "B", 2)
    changelog.send(0, [(b"m:lr", b"stale"), (b"p:9", b"zombie")], ("A", 7), 1)   # A's late flush
    assert changelog.flush(30) == []
    flush_as(changelog, b, 0, {"p:3": b"answered", "m:lr": b"v3"}, "B", 2)
    owner = contents(b)

    standby = PartitionStore(tmp_path / "standby")
    rec = changelog.recover(standby, 0, seed=False)
    assert contents(standby) == owner and (rec.fenced, rec.unfinished, rec.epoch) == (2, 0, 2)

    c = PartitionStore(tmp_path / "c")                         # the next owner, from an empty store
    rec = changelog.recover(c, 0, origin=("C", 1))
    assert contents(c) == owner and (rec.fenced, rec.epoch) == (2, 3)
    assert rec.seeded == 3                                     # m:lr and p:9 (deleted) rewritten, a marker
    assert last_values(changelog, 0) == owner                  # compaction keeps the owner's values
    flush_as(changelog, c, 0, {"p:4": b"answered"}, "C", 3)   # generation 1 < 8: still applied
    owner = contents(c)

    changelog.send(0, [(b"m:lr", b"stale again")], ("B", 8), 2)   # B, now a zombie itself, lands late
    assert changelog.flush(30) == []
    standby.close()
    standby = PartitionStore(tmp_path / "standby")             # the fence read before was kept on disk
    assert standby.changelog_fence == 2
    rec = changelog.recover(standby, 0, seed=False)
    assert contents(standby) == owner and rec.fenced == 1 and standby.changelog_fence == 3


def test_a_flush_cut_short_by_a_fence_is_not_applied(changelog: Changelog, tmp_path: Path) -> None:
    """Part of A's flush before B's fence and the rest after it: neither part is applied, by B or anyone."""
    a = PartitionStore(tmp_path / "a")
    epoch = changelog.recover(a, 1, origin=("A", 4)).epoch
    flush_as(changelog, a, 1, {"p:1": b"answered", "m:lr": b"v1"}, "A", epoch)
    consistent = contents(a)
    changelog.producer.produce(changelog.topic, b"answered", b"p:2", 1)      # A's next flush, first half
    assert changelog.flush(30) == []

    b = PartitionStore(tmp_path / "b")
    rec = changelog.recover(b, 1, origin=("B", 5))
    assert contents(b) == consistent and rec.unfinished == 1 and rec.seeded == 2   # p:2 deleted, a marker
    changelog.send(1, [(b"m:lr", b"v2")], ("A", 4), epoch)   # the second half and A's marker, late
    assert changelog.flush(30) == []

    fresh = PartitionStore(tmp_path / "fresh")
    rec = changelog.recover(fresh, 1, seed=False)
    assert contents(fresh) == consistent and (rec.unfinished, rec.fenced) == (1, 1)


def test_markers_without_an_epoch_are_never_fenced(changelog: Changelog, tmp_path: Path) -> None:
    """Flushes written without fencing (no epoch, as before it) apply in log order, as they did."""
    a = PartitionStore(tmp_path / "a")
    epoch = changelog.recover(a, 0, origin=("A", 9)).epoch
    write(changelog, a, 0, {"m:lr": b"v1"})                   # no epoch on its marker
    flush_as(changelog, a, 0, {"m:lr": b"v2"}, "A", epoch)
    write(changelog, a, 0, {"m:lr": b"v3"})
    fresh = PartitionStore(tmp_path / "fresh")
    rec = changelog.recover(fresh, 0, seed=False)
    assert contents(fresh) == {b"m:lr": b"v3"} and rec.fenced == 0 and fresh.changelog_fence == epoch == 1


def test_the_fence_key_is_not_state(tmp_path: Path) -> None:
    from streams.state import CHANGELOG_FENCE
    s = PartitionStore(tmp_path / "s")
    s.set_changelog_position(12, 3)
    s.put("p:1", b"x")
    s.flush()
    assert (s.changelog_offset, s.changelog_fence) == (12, 3)
    assert dict(s.items()) == {b"p:1": b"x"} and CHANGELOG_FENCE not in dict(s.items())
    s.set_changelog_position(13, None)                         # no epoch read: the fence stays
    assert (s.changelog_offset, s.changelog_fence) == (13, 3)


def test_a_marker_epoch_is_read_from_its_headers() -> None:
    from streams.changelog import marker_epoch
    assert marker_epoch([("writer", b"h-1"), ("generation", b"5"), ("epoch", b"3")]) == 3
    assert marker_epoch(None) is None and marker_epoch([("generation", b"5")]) is None
    assert marker_epoch([("epoch", b"x")]) is None


@pytest.mark.parametrize("origin", [None, ("A", 2)], ids=["unfenced", "fenced"])
def test_a_store_ahead_of_a_recreated_log_seeds_it(changelog: Changelog, tmp_path: Path, origin) -> None:
    """A store whose position is past the log's end (the topic was deleted and made again) writes itself
    to the log whole, at once.

    The embedded broker answers a fetch past the end with neither records nor
    an end-of-partition event: recovery waited for its timeout (300 s) and
    failed, until it read the fetch's high watermark. An owner's fence,
    written after the first read, must not hide where the log had ended.
    """
    a = PartitionStore(tmp_path / "a")
    for i in range(3):
        a.put(f"k{i}", b"v")
    a.flush()
    a.set_changelog_position(1, 4)                   # position 1: the new log's fence alone would reach it
    rec = changelog.recover(a, 1, timeout=20, origin=origin)
    assert rec.seeded == 3 + 1                       # its keys and a marker
    assert rec.epoch == (4 if origin is None else 5)
    fresh = PartitionStore(tmp_path / "fresh")
    changelog.recover(fresh, 1, seed=False, timeout=20)
    assert contents(fresh) == contents(a) and len(contents(fresh)) == 3
