"""SIGKILL a worker mid-stream, restart it: the results equal an uninterrupted run.

elec2 with inline labels on one partition, so an uninterrupted run is exactly
river's progressive validation. Commit order (outputs -> state and model
snapshot in one RocksDB batch -> offsets) means a restarted worker either
finds an event in state (and republishes the same bytes) or processes it from
scratch with the model as it was when that state was written.
"""

from __future__ import annotations

import signal
import time

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from river import evaluate, linear_model, metrics, optim, preprocessing

from streams.datasets import convert, iter_records
from streams.demo import OutputReader, start_worker, stop_worker, wait_ready
from streams.replay import replay
from streams.spec import load_spec
from tests.faults.harness import caught_up, split_stream, topic_ends, wait_for

pytestmark = pytest.mark.integration

N_RECORDS = 16_000      # 8,000 events, each followed by its label


def reference(spec, n_records: int = N_RECORDS):
    """River's progressive validation of the first ``n_records`` of elec2: (event ids, P(true) each)."""
    xs, ys, order = {}, {}, []
    for i, rec in enumerate(iter_records("elec2")):
        if i >= n_records:
            break
        v = rec["value"]
        if "label" in v:
            ys[v["event_id"]] = bool(v["label"])
        else:
            xs[v["event_id"]] = {f: float(v[f]) for f in spec.numeric}
            order.append(v["event_id"])
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.01))
    steps = evaluate.iter_progressive_val_score([(xs[e], ys[e]) for e in order], model, metrics.LogLoss(),
                                                step=1, yield_predictions=True)
    return order, [s["Prediction"].get(True, 0.0) for s in steps]


def all_predictions(settings) -> list[bytes]:
    c = Consumer(settings.consumer_config(group=f"{settings.app_id}-check"))
    c.assign([TopicPartition(settings.topic("predictions"), 0, OFFSET_BEGINNING)])
    out, idle = [], time.monotonic()
    while time.monotonic() - idle < 3:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            out.append(m.value())
            idle = time.monotonic()
    c.close()
    return out


def elec2_run(make_settings, tmp_path, n_records: int, **kw):
    """Settings, stream file and log of an elec2 run on one partition, and River's answers to it."""
    order, expected = reference(load_spec("elec2"), n_records)
    s = make_settings(pipeline="elec2", partitions=1, batch_max=500, **kw)
    stream = tmp_path / "elec2.jsonl"
    convert("elec2", stream, limit=n_records)
    return s, stream, tmp_path / "worker.log", order, expected


@pytest.mark.parametrize("kill_at", [0.3, 0.7])
def test_sigkill_and_restart_equals_uninterrupted_run(make_settings, tmp_path, kill_at):
    s, stream, log, order, expected = elec2_run(make_settings, tmp_path, N_RECORDS)
    reader = OutputReader(s)
    proc = start_worker(s, log)
    try:
        wait_ready(s, proc, log)
        replay(stream, s)
        while len(reader.predictions) < kill_at * len(order):
            reader.poll(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = restart_and_finish(s, log, reader, len(order))
    finally:
        stop_worker(proc)
        reader.close()
    check_equals_river(s, reader, order, expected)


def restart_and_finish(s, log, reader: OutputReader, n_events: int):
    """Start the worker again and wait until ``n_events`` are answered; the process."""
    proc = start_worker(s, log)
    wait_for(lambda: len(reader.predictions) >= n_events, "every event answered", [proc], log,
             timeout=120, poll=lambda: reader.poll(0.2))
    return proc


def wait_exit(proc, log, reader: OutputReader, timeout: float = 60) -> int:
    """Poll the outputs until the worker process exits by itself; its exit status."""
    wait_for(lambda: proc.poll() is not None, "the worker to exit", (), log, timeout=timeout,
             poll=lambda: reader.poll(0.1))
    return proc.returncode


def check_equals_river(s, reader: OutputReader, order: list[str], expected: list[float]) -> int:
    """Every event answered with River's progressive-validation score; answers given twice identical.

    Returns how many answers were given more than once."""
    assert len(reader.predictions) == len(order)                   # every event answered
    worst = max(abs(reader.predictions[e]["score"] - p) for e, p in zip(order, expected))
    assert worst <= 1e-9, f"largest difference from the uninterrupted run: {worst}"
    by_id: dict[str, bytes] = {}
    answers = all_predictions(s)
    for raw in answers:                                             # redelivered answers are identical
        eid = orjson.loads(raw)["event_id"]
        assert by_id.setdefault(eid, raw) == raw, eid
    assert {d["reason"] for d in reader.dlq} <= {"duplicate_label"}  # only redelivered labels, refused
    return len(answers) - len(by_id)


@pytest.mark.parametrize("changelog", [True, False], ids=["changelog", "no-changelog"])
def test_killed_between_the_state_write_and_the_commit(make_settings, tmp_path, changelog):
    """SIGKILL at the one point a kill from outside cannot aim at: a flush has written the state of
    the batches it covers and not yet acknowledged their offsets (``STREAMSCORE_FAILPOINT``).

    The first half of elec2 is processed and committed, then that worker is killed from outside
    (its last writes may still be in RocksDB's memtable: with the changelog on, the store skips
    its WAL and recovers them from the changelog; without it, the store and its WAL are the only
    copy). A second worker takes the second half and kills itself at its first flush that covers
    input, after the state write. The third must answer the records it gets again from the state
    (the same bytes), learn nothing twice, and end with River's progressive-validation scores.
    """
    s, stream, log, order, expected = elec2_run(make_settings, tmp_path, 40_000, changelog=changelog)
    first, second = split_stream(stream, [0.5])
    reader = OutputReader(s)
    proc = start_worker(s, log)
    try:
        wait_ready(s, proc, log)
        replay(first, s)
        wait_for(caught_up(s, {"events": topic_ends(s, "events")}), "the first half committed",
                 [proc], log, poll=lambda: reader.poll(0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = start_worker(s, log, extra_env={"STREAMSCORE_FAILPOINT": "after_state_write:1"})
        wait_ready(s, proc, log)
        replay(second, s)
        status = wait_exit(proc, log, reader)
        assert status == -signal.SIGKILL, f"not killed at the failpoint: {status}"
        proc = restart_and_finish(s, log, reader, len(order))
        # every event may have been answered before the kill: wait until the restarted worker has
        # processed (and committed) the whole input, the records it got again included
        wait_for(caught_up(s, {"events": topic_ends(s, "events")}), "the committed offsets at the end",
                 [proc], log, poll=lambda: reader.poll(0.3))
    finally:
        stop_worker(proc)
        reader.close()
    twice = check_equals_river(s, reader, order, expected)
    assert twice > 0, "no record was delivered again: the kill covered nothing"
