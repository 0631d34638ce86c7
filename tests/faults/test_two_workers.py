"""Two workers in one consumer group over 4 partitions; one is SIGKILLed mid-stream.

The survivor takes the dead worker's partitions over once the group notices
(session timeout 6 s, then a rebalance) and resumes them from the committed
offsets with the state the dead worker flushed (both workers share a state
directory on this host; there is no changelog yet). Asserted: every event is
answered at least once, every copy of an answer is byte-identical and equals
the stored prediction. Labels are replayed after every event was answered
(see test_kill_sweep for why), so the final state is also compared with a
single-worker run's when the reference is cheap enough: here the window state
and the River/torch snapshots, as in the sweep.
"""

from __future__ import annotations

import pytest

from streams.datasets import convert
from streams.spec import load_spec
from tests.faults.harness import (
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
                     kill_at=(0.4,), workers=2, kill_worker=1, restart=False)
    assert run.kills == 1
    state = {p: dump_store(state_dir(s, p)) for p in range(PARTITIONS)}
    stats = check_outputs(run, ids, state)
    print(f"two workers: {stats}, {run.wall_s:.1f}s")

    ref = make_run_settings(broker.bootstrap, tmp_path, "one-worker", pipeline="online_retail",
                            partitions=PARTITIONS, batch_max=400)
    ref_run = run_stream(ref, tmp_path / "ref.log", stream, ids, n_labels)
    ref_state = {p: dump_store(state_dir(ref, p)) for p in range(PARTITIONS)}
    diffs = [f"p{p} {d}" for p in range(PARTITIONS)
             for d in compare_states(ref_state[p], state[p], {"deep", "blend"}, probe,
                                     ("score", "class", "rules", "reasons"))]
    assert not diffs, f"{len(diffs)} differences from a single-worker run:\n" + "\n".join(diffs[:20])
    assert ref_run.exit_codes == [0]
