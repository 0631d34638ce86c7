"""SIGKILL the broker mid-stream, restart it on the same storage: the worker reconnects and resumes.

The broker here is not the session's in-memory one: Tansu keeps its log, its
consumer groups and their committed offsets in an S3 bucket (moto's server,
``streams.broker.LocalS3``), so a broker killed with SIGKILL and started
again on the same port and bucket comes back with everything it had
acknowledged. Clients only see connections drop and come back: the worker
(faust's group consumer, the librdkafka fetcher, the output producer) must
reconnect by itself.

The run: start a worker, replay the first part of a stream, SIGKILL the broker
once part of it is answered, start the broker again, replay the next part, kill
and restart the broker again, replay the rest, wait for every answer, stop the
worker cleanly. Asserted, as in the kill suite (``tests/faults/harness.py``):
every event is answered (prediction or dead letter), every copy of an answer
is byte-identical and equal to the stored prediction, and the final state
equals an uninterrupted run's (on the in-memory broker; the state does not
depend on the broker).

Two things keep these runs inside what the broker can do:

* each part is replayed as few large record batches (``linger.ms`` 200): on
  ``s3://`` storage every produced batch is one object, and a worker fetching
  with the default ``fetch_wait_ms`` (5) stalls once a partition holds a few
  dozen of them (``test_worker_drains_a_topic_of_many_small_batches_on_s3``
  runs with 500 ms instead);
* the replay producer never runs through an outage in the default test: a
  producer retrying through one may duplicate records. The soak variant
  (``slow``) replays through the outages with one request in flight (retries
  may duplicate, never reorder: a duplicate event is answered from state, a
  duplicate label refused) and kills the broker three times, once for longer
  than the group's session timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from streams.broker import EmbeddedBroker, LocalS3
from streams.datasets import convert
from streams.demo import OutputReader, start_worker, stop_worker, wait_ready
from streams.metrics import scrape, total
from streams.replay import replay
from streams.settings import Settings
from streams.spec import load_spec
from tests.faults.harness import (
    Run,
    caught_up,
    check_outputs,
    compare_states,
    consumed,
    dump_store,
    make_run_settings,
    numeric_probe,
    read_raw,
    run_stream,
    settled,
    split_stream,
    state_dir,
    stream_ids,
    tail,
    topic_ends,
    wait_for,
)

pytest.importorskip("moto.server", reason="moto[server] (test extra) holds the broker's s3:// storage")

pytestmark = pytest.mark.integration

RECORDS = 8_000          # elec2: 4,000 events, each followed by its label (inline, one partition)
CUTS = [0.4, 0.7]        # the stream in 3 parts (fractions of its records)...
KILL_AT = [0.2, 0.55]    # ...the broker killed after part i once this fraction of all events is answered
BATCH_MAX = 400


@pytest.fixture(scope="module")
def s3_broker(tmp_path_factory) -> Iterator[EmbeddedBroker]:
    """Tansu on ``s3://`` storage held by a moto server that outlives the broker's restarts."""
    root = tmp_path_factory.mktemp("s3-broker")
    with LocalS3(log_path=str(root / "moto.log")) as s3:
        b = EmbeddedBroker.on_s3(s3.storage("streamscore"), log_path=str(root / "tansu.log"))
        b.start()
        try:
            yield b
        finally:
            b.stop()


def restart_broker(broker: EmbeddedBroker, down_s: float = 1.0) -> float:
    """SIGKILL the broker, leave it down ``down_s``, start it on its port again; seconds it was away."""
    t0 = time.monotonic()
    port = broker.port
    broker.kill()
    time.sleep(down_s)           # the length of the outage (not a synchronisation)
    broker.start(timeout=30)
    assert broker.port == port
    return round(time.monotonic() - t0, 1)


def batching_producer(s: Settings) -> Producer:
    """A replay producer that sends few, large batches, one request at a time (retries never reorder)."""
    return Producer(s.producer_config(**{
        "client.id": f"{s.app_id}-replay", "linger.ms": 200, "max.in.flight.requests.per.connection": 1,
        "message.timeout.ms": 120_000}))


def final_state(s: Settings) -> dict[int, dict[bytes, bytes]]:
    return {p: dump_store(state_dir(s, p)) for p in range(s.partitions)}


def run_with_broker_kills(broker: EmbeddedBroker, s: Settings, log: Path, stream: Path, parts: list[Path],
                          event_ids: set[str], n_labels_topic: int, kill_at: list[float],
                          *, replay_through: bool = False, down_s: list[float] | None = None,
                          pace_s: float = 0.0) -> tuple[Run, list[tuple[int, float]]]:
    """Replay ``parts`` (of ``stream``) through one worker; SIGKILL and restart the broker at fractions answered.

    The events topic first; the labels topic (``n_labels_topic`` records) after
    every event was answered and the answers settled, as ``harness.run_stream``
    does. Without ``replay_through``: part *i* is replayed (and flushed), the
    broker killed once ``kill_at[i]`` of the events are answered and restarted,
    then part *i + 1*... With it: the parts are replayed by a background thread
    (``pace_s`` apart), through the outages. ``down_s[i]``: how long the broker
    stays down at kill *i* (1 s by default).
    """
    t0 = time.monotonic()
    run = Run(s)
    outages: list[tuple[int, float]] = []     # (events answered when killed, seconds away)
    producer = batching_producer(s)
    proc = start_worker(s, log)
    reader = OutputReader(s)
    replayer: threading.Thread | None = None
    replay_errors: list[BaseException] = []
    try:
        wait_ready(s, proc, log, timeout=90)
        n = len(event_ids)
        if replay_through:
            def _replay() -> None:
                try:
                    for part in parts:
                        replay(part, s, topics=["events"], producer=producer)
                        time.sleep(pace_s)      # pacing, so that the outages fall inside the replay
                except BaseException as exc:  # surfaced below
                    replay_errors.append(exc)

            replayer = threading.Thread(target=_replay, name="replay", daemon=True)
            replayer.start()
        for i, frac in enumerate(kill_at):
            if replayer is None:
                replay(parts[i], s, topics=["events"], producer=producer)
            wait_for(lambda frac=frac: len(reader.predictions) >= frac * n, f"{frac:.0%} of the events answered",
                     [proc], log, poll=lambda: reader.poll(0.02))
            answered = len(reader.predictions)
            outages.append((answered, restart_broker(broker, down_s[i] if down_s else 1.0)))
        if replayer is None:
            for part in parts[len(kill_at):]:
                replay(part, s, topics=["events"], producer=producer)
        else:
            replayer.join(180)
            assert not replayer.is_alive() and not replay_errors, replay_errors
        wait_for(lambda: not event_ids.difference(reader.predictions, (d.get("event_id") for d in reader.dlq)),
                 "every event answered after the broker restarts", [proc], log, poll=lambda: reader.poll(0.2))
        if n_labels_topic:
            wait_for(settled(reader), "the predictions to settle", [proc], log)
            replay(stream, s, topics=["labels"], producer=producer)
            wait_for(lambda: consumed(s, "labels") >= n_labels_topic, "every label consumed", [proc], log,
                     poll=lambda: time.sleep(0.2))
        wait_for(caught_up(s, {t: topic_ends(s, t) for t in ("events", "labels")}),
                 "the group's committed offsets at the end of the input", [proc], log, poll=lambda: time.sleep(0.3))
        reader.poll(0.5)
        run.dlq = list(reader.dlq)
    finally:
        run.exit_codes = [stop_worker(proc)]
        reader.close()
    run.kills = len(outages)
    run.predictions = read_raw(s, "predictions", expect_ids=event_ids)
    run.wall_s = time.monotonic() - t0
    return run, outages


def assert_same_as_reference(run: Run, ref: Run, event_ids: set[str], probe: list[dict[str, Any]],
                             volatile: frozenset[str] = frozenset(), derived: tuple[str, ...] = ()) -> dict[str, int]:
    """Every event answered, copies identical, and the final state equal to the reference's."""
    state, ref_state = final_state(run.settings), final_state(ref.settings)
    stats = check_outputs(run, event_ids, state)
    check_outputs(ref, event_ids, ref_state)
    diffs = [f"p{p} {d}" for p in range(run.settings.partitions)
             for d in compare_states(ref_state[p], state[p], set(volatile), probe, derived)]
    assert not diffs, f"{len(diffs)} differences from the uninterrupted run:\n" + "\n".join(diffs[:20])
    return stats


def test_broker_sigkill_and_restart_worker_resumes(s3_broker, broker, tmp_path):
    stream = tmp_path / "elec2.jsonl"
    convert("elec2", stream, limit=RECORDS)
    ids, n_labels, probe = stream_ids(stream, "elec2")
    probe = numeric_probe(probe, "elec2")      # snapshots' pickles may differ between processes: compare by scores
    parts = split_stream(stream, CUTS)

    ref = make_run_settings(broker.bootstrap, tmp_path, "ref-elec2", pipeline="elec2", partitions=1,
                            batch_max=BATCH_MAX)
    ref_run = run_stream(ref, tmp_path / "ref.log", stream, ids, n_labels)
    assert ref_run.exit_codes == [0], tail(tmp_path / "ref.log")

    s = make_run_settings(s3_broker.bootstrap, tmp_path, "brokerkill-elec2", pipeline="elec2", partitions=1,
                          batch_max=BATCH_MAX)
    log = tmp_path / "worker.log"
    run, outages = run_with_broker_kills(s3_broker, s, log, stream, parts, ids, n_labels, KILL_AT)
    assert run.kills == len(KILL_AT)
    assert run.exit_codes == [0], f"worker did not stop cleanly: {run.exit_codes}\n{tail(log)}"
    stats = assert_same_as_reference(run, ref_run, ids, probe)
    assert {d["reason"] for d in run.dlq} <= {"duplicate_label"}, run.dlq[:3]
    print(f"{run.kills} broker restarts: {stats}, (answered at the kill, seconds away) {outages}, "
          f"run {run.wall_s:.1f}s (reference {ref_run.wall_s:.1f}s)")


@pytest.mark.parametrize("fetch_wait_ms, before_start", [(5, False), (5, True), (500, False)],
                         ids=["5ms", "5ms-stalled-from-the-start", "500ms"])
def test_worker_drains_a_topic_of_many_small_batches_on_s3(s3_broker, tmp_path, fetch_wait_ms, before_start):
    """No broker kill: 100 small produce batches on one partition; the worker must answer every event.

    Tansu on s3:// answers a fetch with no records when reading the batches
    takes longer than the fetch wait (tests/integration/test_broker.py shows
    the broker side). With 500 ms it never does here; with the default (5)
    the worker stalled for good after ~120 events, until it learnt to notice:
    records waiting, none fetched for 3 s, so it fetches with 500 ms from
    then on, and says so in its log. ``before_start``: the batches are all
    there before the worker starts, so it stalls before it has consumed a
    record (no position yet: its offset is the group's, or the log start).
    """
    stream = tmp_path / "elec2.jsonl"
    convert("elec2", stream, limit=4_000)
    ids, _, _ = stream_ids(stream, "elec2")
    s = make_run_settings(s3_broker.bootstrap, tmp_path, "manybatches", pipeline="elec2", partitions=1,
                          batch_max=BATCH_MAX, fetch_wait_ms=fetch_wait_ms)
    log = tmp_path / "worker.log"

    def produce() -> None:
        producer = Producer(s.producer_config(**{"client.id": f"{s.app_id}-replay"}))
        for part in split_stream(stream, [i / 100 for i in range(1, 100)]):
            replay(part, s, producer=producer)          # flushed: at least one batch (one object) per part

    if before_start:
        produce()
    proc = start_worker(s, log)
    reader = OutputReader(s)
    try:
        wait_ready(s, proc, log, timeout=90)
        if not before_start:
            produce()
        wait_for(lambda: not ids.difference(reader.predictions), "every event answered", [proc], log,
                 timeout=20, poll=lambda: reader.poll(0.2))
        assert total(scrape(f"http://{s.metrics_host}:{s.metrics_port}/metrics"),
                     "streamscore_worker_fetch_wait_ms") == 500           # as configured, or switched to
    finally:
        stop_worker(proc)
        reader.close()
    assert ("fetching with 500 ms from now on" in log.read_text()) == (fetch_wait_ms == 5)


@pytest.mark.slow
def test_soak_broker_killed_while_replaying(s3_broker, broker, tmp_path):
    """online_retail on 2 partitions (windows, River + torch, labels topic): the broker is killed 3 times
    while the events are replayed: 1 s, 10 s (longer than the group session timeout, 6 s) and 40 s
    (longer than the 30 s a commit waits for outputs to be delivered)."""
    pipeline = "online_retail"
    stream = tmp_path / "retail.jsonl"
    convert(load_spec(pipeline).dataset, stream, limit=12_000)
    ids, n_labels, probe = stream_ids(stream, pipeline)
    parts = split_stream(stream, [i / 6 for i in range(1, 6)])

    ref = make_run_settings(broker.bootstrap, tmp_path, "ref-retail", pipeline=pipeline, partitions=2,
                            batch_max=BATCH_MAX)
    ref_run = run_stream(ref, tmp_path / "ref.log", stream, ids, n_labels)
    assert ref_run.exit_codes == [0], tail(tmp_path / "ref.log")

    s = make_run_settings(s3_broker.bootstrap, tmp_path, "brokerkill-retail", pipeline=pipeline, partitions=2,
                          batch_max=BATCH_MAX)
    log = tmp_path / "worker.log"
    run, outages = run_with_broker_kills(s3_broker, s, log, stream, parts, ids, n_labels, [0.15, 0.4, 0.65],
                                         replay_through=True, down_s=[1.0, 10.0, 40.0], pace_s=1.0)
    assert run.kills == 3
    assert run.exit_codes == [0], f"worker did not stop cleanly: {run.exit_codes}\n{tail(log)}"
    stats = assert_same_as_reference(run, ref_run, ids, probe, frozenset({"deep", "blend"}),
                                     ("score", "class", "rules", "reasons"))
    assert {d["reason"] for d in run.dlq} <= {"duplicate_label"}, run.dlq[:3]
    print(f"{run.kills} broker restarts: {stats}, (answered at the kill, seconds away) {outages}, "
          f"run {run.wall_s:.1f}s (reference {ref_run.wall_s:.1f}s)")
