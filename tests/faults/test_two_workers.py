"""Two workers in one consumer group over 4 partitions, each with its own state directory; one is SIGKILLed.

The workers share nothing but Kafka: each has its own state directory, as if
on two machines. The survivor takes the dead worker's partitions over once the
group notices (session timeout 6 s, then a rebalance), brings their state up
to date from the changelog topic (streams/changelog.py) and resumes them from
the committed offsets. Asserted: every event is answered at least once, every
copy of an answer is byte-identical and equals the stored prediction; the
survivor's final state equals a single-worker run's (window state, label
markers, River/torch snapshots, as in the kill sweep) and equals what the
changelog alone rebuilds. Labels are replayed after every event was answered
(see test_kill_sweep for why). Also: three workers, for the standby copies
the group leader deals.
"""

from __future__ import annotations

import pytest

from streams.changelog import Changelog
from streams.datasets import convert
from streams.demo import start_worker, stop_worker, wait_ready
from streams.metrics import scrape, total
from streams.spec import load_spec
from streams.state import PartitionStore
from tests.faults.harness import (
    _assigned,
    changelog_state,
    check_outputs,
    compare_states,
    dump_store,
    make_run_settings,
    run_stream,
    second_worker,
    state_dir,
    stream_ids,
    tail,
    wait_for,
)

pytestmark = pytest.mark.integration

RECORDS = 4_000
PARTITIONS = 4


def test_two_workers_one_killed_survivor_takes_over(broker, tmp_path):
    stream = tmp_path / "retail.jsonl"
    convert(load_spec("online_retail").dataset, stream, limit=RECORDS)
    ids, n_labels, probe = stream_ids(stream, "online_retail")

    s = make_run_settings(broker.bootstrap, tmp_path, "two-workers", pipeline="online_retail",
                          partitions=PARTITIONS, batch_max=400)
    run = run_stream(s, tmp_path / "workers.log", stream, ids, n_labels,
                     kill_at=(0.4,), workers=2, kill_worker=1, restart=False, own_state=True)
    assert run.kills == 1
    state = {p: dump_store(state_dir(s, p)) for p in range(PARTITIONS)}    # the survivor's directory
    stats = check_outputs(run, ids, state)
    print(f"two workers: {stats}, {run.wall_s:.1f}s")
    for p in range(PARTITIONS):
        rebuilt = changelog_state(s, p, tmp_path)
        assert rebuilt == state[p], (f"p{p}: the changelog rebuilds {len(rebuilt)} keys, the survivor holds "
                                     f"{len(state[p])}; differing: {sorted(set(rebuilt) ^ set(state[p]))[:5]}")

    ref = make_run_settings(broker.bootstrap, tmp_path, "one-worker", pipeline="online_retail",
                            partitions=PARTITIONS, batch_max=400)
    ref_run = run_stream(ref, tmp_path / "ref.log", stream, ids, n_labels)
    ref_state = {p: dump_store(state_dir(ref, p)) for p in range(PARTITIONS)}
    diffs = [f"p{p} {d}" for p in range(PARTITIONS)
             for d in compare_states(ref_state[p], state[p], {"deep", "blend"}, probe,
                                     ("score", "class", "rules", "reasons"))]
    assert not diffs, f"{len(diffs)} differences from a single-worker run:\n" + "\n".join(diffs[:20])
    assert ref_run.exit_codes == [0]


def test_standby_replicas_follow_the_partitions_a_worker_does_not_own(broker, tmp_path):
    """With standbys on, each worker keeps a caught-up copy of the other's partitions.

    Two workers, own state directories, 4 partitions, a refresh every second.
    After the run, each partition has the owner's store and the other
    worker's standby copy: the copy holds state and a changelog position (it
    was refreshed while the owner wrote), and reading the rest of the
    changelog from that position makes it equal the owner's store.
    """
    stream = tmp_path / "retail.jsonl"
    convert(load_spec("online_retail").dataset, stream, limit=2_000)
    ids, n_labels, _ = stream_ids(stream, "online_retail")
    s = make_run_settings(broker.bootstrap, tmp_path, "standby", pipeline="online_retail",
                          partitions=PARTITIONS, batch_max=400, standby_interval_s=1.0)
    run = run_stream(s, tmp_path / "standby.log", stream, ids, n_labels, workers=2, own_state=True)
    assert run.exit_codes == [0, 0], tail(tmp_path / "standby.log")
    dirs = [s.state_dir, *s.state_dir.parent.glob(f"{s.state_dir.name}-w*")]
    assert len(dirs) == 2
    spec = load_spec("online_retail").name
    owners = 0
    for p in range(PARTITIONS):
        stores = []
        for d in dirs:
            path = d / s.app_id / spec / f"{s.topic('events')}-{p}"
            assert path.exists(), f"p{p}: no store (owned or standby) under {d}"
            st = PartitionStore(path)
            stores.append((st.changelog_offset or 0, st))
        (pos_a, a), (pos_b, b) = sorted(stores, key=lambda x: x[0])    # b: the owner (furthest along)
        owners += pos_b > 0
        assert pos_a > 0 and len(a) > 0, f"p{p}: the standby copy was never refreshed ({pos_a}, {len(a)} keys)"
        rest = Changelog(s.changelog_topic(spec), s.producer_config(),
                         s.consumer_config(group=f"{s.app_id}-check")).recover(a, p, timeout=60, seed=False)
        assert rest.start == pos_a
        assert dict(a.items()) == dict(b.items()), f"p{p}: the caught-up standby differs from the owner's store"
        a.close()
        b.close()
    assert owners == PARTITIONS


def test_three_workers_keep_the_standby_count_dealt_by_the_leader(broker, tmp_path):
    """Three workers, 6 partitions, ``standby_replicas`` 1: each partition has one standby copy on a
    worker that does not own it, so each worker follows 2 partitions, not the 4 it does not own.

    The deal travels from the group leader in faust's assignment (streams/assignment.py) and each
    worker reports what it follows on /metrics (``streamscore_state_standby_partitions``)."""
    s = make_run_settings(broker.bootstrap, tmp_path, "three", pipeline="online_retail", partitions=6,
                          standby_interval_s=1.0, standby_replicas=1)
    confs = [s, second_worker(s, own_state=True), second_worker(s, own_state=True)]
    log = tmp_path / "three.log"
    procs = [start_worker(c, log) for c in confs]

    def following(c) -> float:
        try:
            return total(scrape(f"http://{c.metrics_host}:{c.metrics_port}/metrics"),
                         "streamscore_state_standby_partitions")
        except OSError:
            return -1.0

    try:
        for c, p in zip(confs, procs):
            wait_ready(c, p, log, timeout=90)
        wait_for(lambda: [_assigned(c) for c in confs] == [2, 2, 2], "two partitions each", procs, log, timeout=90)
        wait_for(lambda: [following(c) for c in confs] == [2, 2, 2], "two standby copies each", procs, log,
                 timeout=60)
    finally:
        for p in procs:
            stop_worker(p)
