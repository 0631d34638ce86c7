"""A real worker process against the real embedded broker: scoring, dlq, redelivery."""

from __future__ import annotations

import time

import orjson
import pytest
from confluent_kafka import Producer
from river import linear_model, optim, preprocessing

from streams.demo import OutputReader, start_worker, stop_worker
from streams.metrics import scrape, total

pytestmark = pytest.mark.integration

FEATURES = ("period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer")


def event(i: int, **over) -> dict:
    v = {"event_id": f"e{i}", "ts": 1000 * i, **{f: round(0.1 * (i % 7) + 0.01 * k, 4) for k, f in enumerate(FEATURES)}}
    v.update(over)
    return v


def produce(settings, values, topic="events", keys=None) -> None:
    p = Producer(settings.producer_config())
    for i, v in enumerate(values):
        p.produce(settings.topic(topic), v if isinstance(v, bytes) else orjson.dumps(v),
                  keys[i] if keys else b"nsw")
    assert p.flush(10) == 0


def wait_for(reader: OutputReader, n: int, timeout: float = 60.0, worker=None) -> None:
    deadline = time.monotonic() + timeout
    while reader.done < n and time.monotonic() < deadline:
        reader.poll(0.2)
        if worker is not None and worker.poll() is not None:
            raise AssertionError(f"worker exited with {worker.returncode}")
    assert reader.done >= n, f"only {reader.done} of {n} outputs within {timeout}s"


@pytest.fixture
def worker(make_settings, tmp_path):
    started = []

    def start(**kw):
        s = make_settings(**kw)
        proc = start_worker(s, tmp_path / "worker.log")
        started.append(proc)
        return s, proc

    yield start
    for proc in started:
        stop_worker(proc)


def test_bad_input_goes_to_dlq_and_worker_keeps_scoring(worker):
    s, proc = worker()
    reader = OutputReader(s)
    produce(s, [
        event(0),
        b'{"event_id": "bad-json", "ts": 1,',                       # malformed JSON
        {k: v for k, v in event(1).items() if k != "nswprice"},     # missing required feature
        event(2, nswdemand="high"),                                  # non-numeric feature
        event(3),
    ])
    wait_for(reader, 5, worker=proc)
    assert sorted(reader.predictions) == ["e0", "e3"]
    assert sorted(d["reason"] for d in reader.dlq) == ["malformed_json", "missing_field", "wrong_type"]
    bad = {d["reason"]: d for d in reader.dlq}
    assert bad["malformed_json"]["value"] == '{"event_id": "bad-json", "ts": 1,'   # original bytes kept
    assert "nswprice" in bad["missing_field"]["detail"]
    assert "nswdemand" in bad["wrong_type"]["detail"]
    produce(s, [event(4)])                                           # still alive and scoring
    wait_for(reader, 6, worker=proc)
    assert "e4" in reader.predictions and proc.poll() is None
    reader.close()


def test_redelivered_event_is_answered_from_state_and_trains_once(worker):
    s, proc = worker()
    reader = OutputReader(s)
    e0, e1 = event(0), event(1)
    label0 = {"event_id": "e0", "ts": 0, "label": 1}
    produce(s, [e0, label0])
    wait_for(reader, 1, worker=proc)
    produce(s, [e0, label0, e1])       # redelivery of the event and of its label
    wait_for(reader, 3, worker=proc)   # e0, dlq(duplicate label), e1
    reader.poll(1.0)

    assert reader.duplicates == 1
    assert [d["reason"] for d in reader.dlq] == ["duplicate_label"]
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.01))
    x0 = {f: e0[f] for f in FEATURES}
    assert reader.predictions["e0"]["score"] == model.predict_proba_one(x0).get(True, 0.0)
    model.learn_one(x0, True)                                        # learned exactly once
    x1 = {f: e1[f] for f in FEATURES}
    assert reader.predictions["e1"]["score"] == pytest.approx(model.predict_proba_one(x1)[True], abs=1e-12)
    assert reader.predictions["e1"]["model_version"] == "lr@1"
    reader.close()


def test_redelivered_prediction_is_byte_identical(worker, broker):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    s, proc = worker()
    reader = OutputReader(s)
    produce(s, [event(0), event(1)])
    wait_for(reader, 2, worker=proc)
    produce(s, [event(0)])
    deadline = time.monotonic() + 30
    while reader.duplicates < 1 and time.monotonic() < deadline:
        reader.poll(0.2)
    reader.close()
    c = Consumer(s.consumer_config(group="check"))
    c.assign([TopicPartition(s.topic("predictions"), 0, OFFSET_BEGINNING)])
    values = []
    while len(values) < 3:
        m = c.poll(5)
        assert m is not None, "predictions missing"
        values.append(m.value())
    c.close()
    e0 = [v for v in values if orjson.loads(v)["event_id"] == "e0"]
    assert len(e0) == 2 and e0[0] == e0[1]


def test_a_running_worker_deletes_a_stale_local_copy_and_keeps_its_own(worker):
    """The worker's timer (streams/app.py) passes what it owns and follows to BatchScorer.remove_stale:
    a copy of a partition it neither owns nor follows, unused past state_cleanup_delay_s, goes;
    the store of the partition it scores stays (unit tests: tests/unit/test_state_cleanup.py)."""
    import os

    from streams.state import PartitionStore

    s, proc = worker(state_cleanup_delay_s=2.0)
    parent = s.state_dir / s.app_id / "elec2"
    stale = PartitionStore(parent / f"{s.topic('events')}-3")      # a partition owned elsewhere now
    stale.put("k", b"v")
    stale.close()
    os.utime(stale.path, (time.time() - 60, time.time() - 60))
    reader = OutputReader(s)
    produce(s, [event(0)])
    wait_for(reader, 1, worker=proc)
    own = parent / f"{s.topic('events')}-0"
    deadline = time.monotonic() + 30
    while stale.path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not stale.path.exists(), "the stale copy is still there"
    assert own.exists() and proc.poll() is None
    produce(s, [event(1)])                                           # and the owned partition still scores
    wait_for(reader, 2, worker=proc)
    assert own.exists()
    reader.close()


def _batches(settings) -> float:
    """The worker's micro-batches so far (its Prometheus histogram's count)."""
    return total(scrape(f"http://{settings.metrics_host}:{settings.metrics_port}/metrics", timeout=5),
                 "streamscore_worker_batch_size_records_count")


@pytest.mark.parametrize("linger_ms", [0, 300])
def test_a_fetch_linger_gathers_a_trickle_into_fewer_batches(worker, linger_ms):
    """``fetch_linger_ms``: after a fetch round of a few records the worker waits before the next, so a
    trickle of events comes in fewer, larger micro-batches (each has a fixed cost); without it, about
    one batch an event. Every event is answered either way."""
    s, proc = worker(fetch_linger_ms=linger_ms)
    reader = OutputReader(s)
    produce(s, [event(0)])
    wait_for(reader, 1, worker=proc)                       # joined and scoring
    before = _batches(s)
    p = Producer(s.producer_config(**{"linger.ms": 0}))
    n = 40
    for i in range(1, n + 1):                              # one event every 25 ms, each sent at once
        p.produce(s.topic("events"), orjson.dumps(event(i)), b"nsw")
        p.flush(10)
        time.sleep(0.025)
    wait_for(reader, n + 1, worker=proc)
    batches = _batches(s) - before
    if linger_ms:
        assert batches <= n / 4, f"{batches} batches for {n} events"
    else:
        assert batches >= n / 2, f"{batches} batches for {n} events"
