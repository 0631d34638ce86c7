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
(see test_kill_sweep for why).
"""

from __future__ import annotations

import pytest

from streams.datasets import convert
from streams.spec import load_spec
from tests.faults.harness import (
    changelog_state,
    check_outputs,
    compare_states,
    dump_store,
    make_run_settings,
    run_stream,
    state_dir,
    stream_ids,
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
