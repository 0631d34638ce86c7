"""A paused worker ("zombie") that lost its partitions writes no state when it wakes up.

The case: a worker stops running for longer than the group's session timeout
(a long GC or swap storm, a VM paused, SIGSTOP) with state it has not yet
flushed. The group expels it and gives its partitions to another worker, which
recovers them from the changelog and carries on. When the paused worker runs
again, its first heartbeat learns it is no longer a member, and faust calls
the partitions-revoked callback. That callback used to flush, as it does in an
ordinary rebalance: the zombie then wrote its stale windows into the changelog
*after* the new owner's newer ones, and every later reader of the changelog
(a standby, the next owner) took the stale values. Kafka's Java client calls
this case ``onPartitionsLost`` (no commit, no flush); aiokafka has no such
callback, so streamscore tells the two apart itself (streams/_faust_hooks.py,
``GroupLease``; docs/reliability.md section 7).

Asserted: after the zombie woke up, rejoined and the group settled, the state
the changelog alone rebuilds equals a single uninterrupted run's, partition by
partition, and every copy of an answer is byte-identical.
"""

from __future__ import annotations

import signal

import orjson
import pytest

from streams.changelog import COMMIT_MARKER
from streams.datasets import convert
from streams.demo import OutputReader, start_worker, stop_worker, wait_ready
from streams.metrics import scrape, total
from streams.replay import replay
from streams.spec import load_spec
from tests.faults.harness import (
    _assigned,
    caught_up,
    changelog_records,
    changelog_state,
    compare_states,
    dump_store,
    make_run_settings,
    read_raw,
    run_stream,
    second_worker,
    state_dir,
    stream_ids,
    tail,
    topic_ends,
    wait_for,
)

pytestmark = pytest.mark.integration

RECORDS = 4_000
PARTITIONS = 4


def _markers(s) -> dict[int, list[tuple[int, int, str]]]:
    """Each changelog partition's commit markers in log order: (offset, generation, writer)."""
    return {p: [(off, int(h["generation"]), h["writer"].decode()) for off, key, h in records if key == COMMIT_MARKER]
            for p, records in changelog_records(s, PARTITIONS).items()}


def test_a_paused_worker_that_lost_its_partitions_writes_no_state(broker, tmp_path):
    stream = tmp_path / "retail.jsonl"
    convert(load_spec("online_retail").dataset, stream, limit=RECORDS)
    ids, _, probe = stream_ids(stream, "online_retail")
    # every other event first, then the rest: the customers of the first part come back in the
    # second, so the new owner updates the very windows the zombie holds stale copies of
    lines = [ln for ln in stream.read_bytes().splitlines(keepends=True) if orjson.loads(ln)["topic"] == "events"]
    first, second, both = (tmp_path / n for n in ("first.jsonl", "second.jsonl", "both.jsonl"))
    first.write_bytes(b"".join(lines[0::2]))
    second.write_bytes(b"".join(lines[1::2]))
    both.write_bytes(first.read_bytes() + second.read_bytes())
    first_ids = stream_ids(first, "online_retail")[0]

    s = make_run_settings(broker.bootstrap, tmp_path, "zombie", pipeline="online_retail",
                          partitions=PARTITIONS, batch_max=400)
    # the zombie-to-be holds everything it processes unflushed (its commit interval is longer
    # than the test), as a worker does between two flushes when it is paused
    a = s.model_copy(update={"commit_interval_s": 600.0})
    b = second_worker(s, own_state=True)
    log = tmp_path / "zombie.log"
    reader = OutputReader(s)
    pa = start_worker(a, log)
    procs = [pa]
    try:
        wait_ready(a, pa, log, timeout=90)
        replay(first, s, topics=["events"])
        wait_for(lambda: first_ids <= set(reader.predictions), "the first half answered by A", procs, log,
                 poll=lambda: reader.poll(0.2))
        pa.send_signal(signal.SIGSTOP)
        try:
            pb = start_worker(b, log)
            procs.append(pb)
            wait_ready(b, pb, log, timeout=90)
            wait_for(lambda: _assigned(b) == PARTITIONS, "B owning every partition (A expelled)", [pb], log)
            replay(second, s, topics=["events"])
            wait_for(caught_up(s, {"events": topic_ends(s, "events")}), "B's commits at the end of the events",
                     [pb], log, poll=lambda: reader.poll(0.3))
        finally:
            pa.send_signal(signal.SIGCONT)
        # A wakes up, learns it was expelled, rejoins: the partitions are shared again
        wait_for(lambda: _assigned(a) > 0 and _assigned(a) + _assigned(b) == PARTITIONS,
                 "A back in the group", procs, log, poll=lambda: reader.poll(0.3))
        wait_for(caught_up(s, {"events": topic_ends(s, "events")}), "the group's commits at the end",
                 procs, log, poll=lambda: reader.poll(0.3))
        lost = total(scrape(f"http://{a.metrics_host}:{a.metrics_port}/metrics"),
                     "streamscore_worker_partitions_lost_total")
        assert lost == PARTITIONS, f"A counted {lost} partitions lost"
    finally:
        codes = [stop_worker(p) for p in procs]
        reader.close()
    assert codes == [0, 0], tail(log)

    # every flush's commit marker names its writer and group generation: a flush of an older
    # generation after a newer one is a zombie's write over the new owner's state
    for p, marks in _markers(s).items():
        gens = [g for _, g, _ in marks]
        assert gens == sorted(gens), f"p{p}: flush generations go back: {marks}"
        assert marks, f"p{p}: no flush at all"

    copies: dict[str, bytes] = {}
    for raw in read_raw(s, "predictions", expect_ids=ids):
        eid = orjson.loads(raw)["event_id"]
        assert copies.setdefault(eid, raw) == raw, f"{eid}: two different answers"
    assert set(copies) == ids

    ref = make_run_settings(broker.bootstrap, tmp_path, "zombie-ref", pipeline="online_retail",
                            partitions=PARTITIONS, batch_max=400)
    ref_run = run_stream(ref, tmp_path / "ref.log", both, ids, 0)
    assert ref_run.exit_codes == [0]
    diffs = []
    for p in range(PARTITIONS):
        rebuilt = changelog_state(s, p, tmp_path)
        diffs += [f"p{p} {d}" for d in compare_states(dump_store(state_dir(ref, p)), rebuilt, {"deep", "blend"},
                                                      probe, ("score", "class", "rules", "reasons"))]
    assert not diffs, (f"{len(diffs)} differences between the changelog's state and an uninterrupted run:\n"
                       + "\n".join(diffs[:20]))
    # the scenario happened as intended: A was expelled while paused and said so when it woke up
    assert "partitions lost" in log.read_text(errors="replace"), f"A never lost its partitions\n{tail(log)}"
