"""Outputs that are never delivered: the worker stops, commits nothing, and a restart repeats nothing.

The commit order (reliability.md, section 3) says an output the broker did
not acknowledge within ``delivery_timeout_s`` is lost, so the scorer drops
what it holds and refuses every later commit; the restarted worker answers
those records again from the last committed state. The unit tests prove the
wiring; this one makes a real delivery fail inside a running worker: the
test's own broker is frozen (SIGSTOP) longer than the delivery timeout
while the worker is busy with a backlog it has already fetched, so its
outputs time out in librdkafka's queue (``_MSG_TIMED_OUT``).

elec2 with inline labels on one partition: an uninterrupted run is River's
progressive validation, so "nothing lost, nothing counted twice" is checked
exactly, score by score.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from streams.broker import EmbeddedBroker
from streams.demo import OutputReader, start_worker, stop_worker, wait_ready
from streams.replay import replay
from tests.faults.harness import wait_for
from tests.faults.test_kill import check_equals_river, elec2_run, restart_and_finish, wait_exit

pytestmark = pytest.mark.integration

N_RECORDS = 90_000      # all of elec2 (45,000 events, each followed by its label)
FREEZE_S = 6.0          # > delivery_timeout_s (2 s): the queued outputs time out


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    """A broker of this test's own: freezing the session's would stall every other test's worker."""
    b = EmbeddedBroker(log_path=os.environ.get("STREAMSCORE_TEST_BROKER_LOG"))
    b.start()
    yield b
    b.stop()


def freeze_mid_backlog(broker: EmbeddedBroker, s, proc, log, reader: OutputReader, seconds: float) -> None:
    """Freeze ``broker`` (SIGSTOP) for ``seconds`` once the worker ``proc`` answers its first event.

    The callers replay the whole stream before they start the worker, so it
    starts on a backlog: the freeze must catch it mid-way (a worker at
    ~50,000 events/s finished 20,000 events replayed while it ran before the
    test could react)."""
    wait_ready(s, proc, log)
    wait_for(lambda: len(reader.predictions) >= 1, "consuming: a backlog fetched, outputs flowing",
             [proc], log, poll=lambda: reader.poll(0.02))
    assert broker._proc is not None
    os.kill(broker._proc.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(broker._proc.pid, signal.SIGCONT)


def test_undelivered_outputs_stop_the_worker_and_a_restart_repeats_nothing(broker, make_settings, tmp_path):
    s, stream, log, order, expected = elec2_run(make_settings, tmp_path, N_RECORDS, delivery_timeout_s=2.0)
    reader = OutputReader(s)
    replay(stream, s)
    proc = start_worker(s, log)
    try:
        freeze_mid_backlog(broker, s, proc, log, reader, FREEZE_S)
        before = len(reader.predictions)
        assert wait_exit(proc, log, reader) != 0, "the worker exited cleanly after outputs were lost"
        text = log.read_text()
        assert "Message timed out" in text and "a batch failed half-way" in text, text[-3000:]
        assert before < len(order), "every event answered before the freeze: nothing was at stake"

        proc = restart_and_finish(s, log, reader, len(order))
    finally:
        stop_worker(proc)
        reader.close()
    check_equals_river(s, reader, order, expected)


def test_a_frozen_broker_is_waited_out_not_fetched_from_more_slowly(broker, make_settings, tmp_path):
    """A broker frozen for 8 s, shorter than the delivery timeout (300 s), mid-backlog: an outage
    only delays the worker. It answers every event with River's score afterwards, and does not
    take the outage for the s3:// fetch quirk (records waiting, fetches answered empty): its
    fetch wait stays as it was.

    (Here the worker's flush waits on the frozen broker for its outputs, so its fetch loop does
    not run during the freeze; ``tests/unit/test_faust_hooks.py::
    test_a_stalled_fetch_is_told_from_an_outage_by_the_brokers_answers`` pins what tells a
    stall from an outage when it does: the broker's silence, librdkafka's ``rxidle``.)"""
    s, stream, log, order, expected = elec2_run(make_settings, tmp_path, N_RECORDS)
    reader = OutputReader(s)
    replay(stream, s)
    proc = start_worker(s, log)
    try:
        freeze_mid_backlog(broker, s, proc, log, reader, 8.0)   # well past a stall's 3 s
        wait_for(lambda: len(reader.predictions) >= len(order), "every event answered", [proc], log,
                 timeout=120, poll=lambda: reader.poll(0.2))
    finally:
        stop_worker(proc)
        reader.close()
    assert "no records fetched" not in log.read_text()
    check_equals_river(s, reader, order, expected)
