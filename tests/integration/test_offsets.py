"""Offsets committed through faust survive a restart; two workers share the partitions."""

from __future__ import annotations

import time

import pytest

from streams.demo import OutputReader, start_worker, stop_worker, wait_ready
from tests.integration.test_worker import event, produce, wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fetcher", ["librdkafka", "aiokafka"])
def test_restart_resumes_from_committed_offsets(make_settings, tmp_path, fetcher):
    s = make_settings(partitions=2, fetcher=fetcher)
    log = tmp_path / "worker.log"
    reader = OutputReader(s)
    proc = start_worker(s, log)
    try:
        wait_ready(s, proc, log)
        produce(s, [r for i in range(300) for r in (event(i), {"event_id": f"e{i}", "ts": i, "label": i % 2})])
        wait_for(reader, 300, worker=proc)
        time.sleep(2 * s.commit_interval_s + 0.5)        # let a commit happen
    finally:
        assert stop_worker(proc) == 0, log.read_text()[-2000:]
    proc = start_worker(s, log)                         # same group, same state dir
    try:
        wait_ready(s, proc, log)
        produce(s, [event(i) for i in range(300, 400)])
        wait_for(reader, 400, worker=proc)
        reader.poll(1.0)
    finally:
        stop_worker(proc)
        reader.close()
    assert sorted(reader.predictions) == sorted(f"e{i}" for i in range(400))
    assert reader.duplicates == 0                       # nothing before the commit was re-read
    assert reader.dlq == []
    # the model continued from its signed snapshot: it had learned 300 labels before the restart
    assert {reader.predictions[f"e{i}"]["model_version"] for i in range(300, 400)} == {"lr@300"}


def test_two_workers_share_partitions_and_score_every_event(make_settings, tmp_path):
    from streams.broker import free_port

    s = make_settings(partitions=4)
    s2 = s.model_copy(update={"web_port": free_port(), "metrics_port": free_port(),
                              "state_dir": tmp_path / "state-b"})
    reader = OutputReader(s)
    a = start_worker(s, tmp_path / "a.log")
    b = start_worker(s2, tmp_path / "b.log")
    try:
        wait_ready(s, a, tmp_path / "a.log")
        wait_ready(s2, b, tmp_path / "b.log")
        produce(s, [event(i) for i in range(2000)], keys=[f"user{i % 97}".encode() for i in range(2000)])
        wait_for(reader, 2000, timeout=90)
    finally:
        stop_worker(a)
        stop_worker(b)
        reader.close()
    assert len(reader.predictions) == 2000
    assert reader.dlq == []


def test_a_worker_joining_mid_stream_loses_nothing(make_settings, tmp_path):
    """A second worker joins while the first is scoring: every event is answered, duplicates identical."""
    import threading

    from streams.broker import free_port

    s = make_settings(partitions=4, batch_max=200)
    s2 = s.model_copy(update={"web_port": free_port(), "metrics_port": free_port(),
                              "state_dir": tmp_path / "state-b"})
    reader = OutputReader(s)
    a = start_worker(s, tmp_path / "a.log")
    b = None
    try:
        wait_ready(s, a, tmp_path / "a.log")
        n = 6000

        def paced() -> None:                             # ~20 s of traffic, 100 events every 0.33 s
            for lo in range(0, n, 100):                  # (a second worker takes ~5-10 s to join on a busy box)
                produce(s, [event(i) for i in range(lo, lo + 100)],
                        keys=[f"user{i % 97}".encode() for i in range(lo, lo + 100)])
                time.sleep(0.33)

        t = threading.Thread(target=paced)
        t.start()
        while reader.done < n // 5:
            reader.poll(0.1)
        b = start_worker(s2, tmp_path / "b.log")          # rebalance while A is busy
        wait_ready(s2, b, tmp_path / "b.log")
        assert t.is_alive(), "traffic ended before the second worker joined: the test would prove nothing"
        t.join()
        wait_for(reader, n, timeout=120)
    finally:
        stop_worker(a)
        if b is not None:
            stop_worker(b)
        reader.close()
    assert len(reader.predictions) == n and reader.dlq == []
