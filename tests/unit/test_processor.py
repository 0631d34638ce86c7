"""Unit tests for streams.processor.PartitionProcessor: the semantics of one partition.

No broker: records are :class:`streams.processor.Record` tuples, state is a
RocksDB :class:`~streams.state.PartitionStore` under ``tmp_path``. The clock is
fixed so that prediction bytes are reproducible across runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from river import linear_model, optim, preprocessing

from streams.datasets import iter_records
from streams.processor import Output, PartitionProcessor, Record
from streams.spec import load_spec
from streams.state import PartitionStore

SPEC = load_spec("elec2")
T0_S = 1_700_000_000.0


def fixed_clock() -> float:
    return T0_S


def make_proc(path: Path, spec: Any = SPEC) -> PartitionProcessor:
    return PartitionProcessor(spec, PartitionStore(path), partition=0, clock=fixed_clock)


def reference_model() -> Any:
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.01))


@pytest.fixture(scope="module")
def elec2_records() -> list[dict[str, Any]]:
    """1000 real records: 500 events, each followed by its inline label."""
    return list(iter_records("elec2", limit=1000))


def to_records(rows: Iterable[dict[str, Any]], start: int = 0) -> list[Record]:
    return [Record(start + i, r["key"].encode(), orjson.dumps(r["value"]), 1_000 + i)
            for i, r in enumerate(rows)]


def ev(i: int, **over: Any) -> dict[str, Any]:
    """A synthetic elec2 event."""
    v = {"event_id": f"e{i}", "ts": 1_000 + i, "period": (i % 48) / 48, "nswprice": 0.05 + 0.001 * (i % 7),
         "nswdemand": 0.4 + 0.01 * (i % 5), "vicprice": 0.003, "vicdemand": 0.42 - 0.002 * (i % 3),
         "transfer": 0.41 + 0.003 * (i % 11)}
    v.update(over)
    return v


def lab(i: int, y: int) -> dict[str, Any]:
    return {"event_id": f"e{i}", "ts": 1_000 + i, "label": y}


_offsets = itertools.count(10_000)


def recs(*docs: Any) -> list[Record]:
    out = []
    for d in docs:
        value = d if isinstance(d, bytes) else orjson.dumps(d)
        out.append(Record(next(_offsets), b"nsw", value, 1_000))
    return out


def preds(outs: list[Output]) -> list[dict[str, Any]]:
    return [orjson.loads(o.value) for o in outs if o.topic == "predictions"]


def dlqs(outs: list[Output]) -> list[dict[str, Any]]:
    return [orjson.loads(o.value) for o in outs if o.topic == "dlq"]


def n_learned(p: PartitionProcessor) -> int:
    return p.models[0].n_learned


# -- (a) predict-then-learn parity with River --------------------------------------
@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_parity_with_river_lockstep(tmp_path: Path, elec2_records: list[dict[str, Any]], batch_size: int) -> None:
    proc = make_proc(tmp_path / "p0")
    ref = reference_model()
    records = to_records(elec2_records)
    scores: list[float] = []
    for i in range(0, len(records), batch_size):
        out = proc.process("events", records[i:i + batch_size])
        assert all(o.topic == "predictions" for o in out)
        assert proc.last_stats.dlq is not None and not proc.last_stats.dlq
        scores += [p["score"] for p in preds(out)]
    # lockstep reference: predict event i, then learn label i
    expected: list[float] = []
    n_events = 0
    x: dict[str, float] = {}
    for row in elec2_records:
        v = row["value"]
        if "label" in v:
            ref.learn_one(x, bool(v["label"]))
        else:
            x = {f: v[f] for f in SPEC.numeric}
            expected.append(ref.predict_proba_one(x)[True])
            n_events += 1
    assert n_events == 500
    assert len(scores) == len(expected) == 500
    for i, (got, want) in enumerate(zip(scores, expected, strict=True)):
        assert got == pytest.approx(want, abs=1e-12, rel=0), f"event {i}"
    assert n_learned(proc) == 500
    assert len({round(s, 6) for s in scores}) > 50, "scores must actually vary (the model learns)"
    proc.close()


def test_prediction_document(tmp_path: Path) -> None:
    proc = make_proc(tmp_path / "p0")
    out = proc.process("events", [Record(3, b"nsw", orjson.dumps(ev(1)), int(T0_S * 1000) - 250)])
    assert len(out) == 1 and out[0].topic == "predictions" and out[0].key == b"nsw"
    p = orjson.loads(out[0].value)
    assert p["event_id"] == "e1" and p["key"] == "nsw" and p["ts"] == 1_001
    assert p["score"] == 0.5 and p["class"] == 0        # a tie is class 0, as River's argmax
    assert p["model"] == "lr" and p["model_version"] == "lr@0"
    assert p["scores"] == {"lr": 0.5}
    assert "processing_ms" not in p and "latency_ms" not in p   # deterministic bytes: no wall clock
    assert proc.last_stats.predictions == 1 and proc.last_stats.latencies_s == [pytest.approx(0.25)]


def test_published_class_agrees_with_prequential_accuracy(tmp_path: Path,
                                                         elec2_records: list[dict[str, Any]]) -> None:
    proc = make_proc(tmp_path / "p0")
    out = proc.process("events", to_records(elec2_records))
    classes = {d["event_id"]: d["class"] for d in preds(out)}
    labels = {r["value"]["event_id"]: r["value"]["label"] for r in elec2_records if "label" in r["value"]}
    for d in preds(out):
        assert d["class"] == int(d["score"] > SPEC.threshold)
    hits = sum(classes[e] == labels[e] for e in labels)
    figures = proc.snapshot()["models"]["lr"]
    assert figures["n"] == 500
    assert figures["accuracy"] == pytest.approx(hits / 500, abs=1e-12)
    assert 0.5 < figures["accuracy"] < 1.0


# -- (b) redelivered events ---------------------------------------------------------
def _stream_with_duplicates() -> tuple[list[list[Any]], list[list[Any]]]:
    """Batches of a stream, without and with redeliveries of events e2 and e5."""
    clean = [[ev(0), lab(0, 1), ev(1), lab(1, 0), ev(2), lab(2, 1)],
             [ev(3), lab(3, 0), ev(4), lab(4, 1)],
             [ev(5), lab(5, 1), ev(6), lab(6, 0), ev(7)]]
    dup = [[ev(0), lab(0, 1), ev(1), lab(1, 0), ev(2), lab(2, 1), ev(2)],      # same batch
           [ev(3), lab(3, 0), ev(2), ev(4), lab(4, 1)],                        # later batch
           [ev(5), lab(5, 1), ev(5), ev(6), lab(6, 0), ev(2, nswprice=9.0), ev(7)]]  # changed payload too
    return clean, dup


def test_redelivered_event_is_answered_from_state(tmp_path: Path) -> None:
    clean, dup = _stream_with_duplicates()
    pa, pb = make_proc(tmp_path / "a"), make_proc(tmp_path / "b")
    outs_a: list[Output] = []
    outs_b: list[Output] = []
    for ba, bb in zip(clean, dup, strict=True):
        outs_a += pa.process("events", recs(*ba))
        outs_b += pb.process("events", recs(*bb))
    first = {}
    fresh_b = []
    for o in outs_b:
        assert o.topic == "predictions"
        eid = orjson.loads(o.value)["event_id"]
        if eid in first:
            assert o.value == first[eid], f"redelivery of {eid} must be byte-identical"
        else:
            first[eid] = o.value
            fresh_b.append(o.value)
    assert sum(1 for o in outs_b if orjson.loads(o.value)["event_id"] == "e2") == 4
    # without the duplicates the run is identical: same model, same scores, same bytes
    assert [o.value for o in outs_a] == fresh_b
    assert n_learned(pa) == n_learned(pb) == 7
    assert pa.snapshot() == pb.snapshot()
    nxt = recs(ev(8))
    assert pa.process("events", nxt)[0].value == pb.process("events", nxt)[0].value


def test_redelivery_stats_and_no_learning(tmp_path: Path) -> None:
    p = make_proc(tmp_path / "p")
    p.process("events", recs(ev(0), lab(0, 1)))
    assert n_learned(p) == 1
    out = p.process("events", recs(ev(0), ev(0)))
    assert len(out) == 2 and out[0].value == out[1].value
    assert p.last_stats.duplicates == 2 and p.last_stats.predictions == 0
    assert n_learned(p) == 1


# -- (c) label before its event -----------------------------------------------------
def test_label_before_event_is_applied_after_scoring(tmp_path: Path) -> None:
    p = make_proc(tmp_path / "p")
    ref = reference_model()
    out = p.process("labels", recs(lab(0, 1)))
    assert out == [] and n_learned(p) == 0
    assert p.last_stats.labels_pending == 1 and p.last_stats.labels_joined == 0
    x0 = {f: ev(0)[f] for f in SPEC.numeric}
    out = p.process("events", recs(ev(0)))
    (pred,) = preds(out)
    assert pred["score"] == ref.predict_proba_one(x0)[True] == 0.5   # scored without the label
    assert pred["model_version"] == "lr@0"
    assert p.last_stats.labels_joined == 1 and n_learned(p) == 1
    ref.learn_one(x0, True)
    x1 = {f: ev(1)[f] for f in SPEC.numeric}
    (pred1,) = preds(p.process("events", recs(ev(1))))
    assert pred1["score"] == pytest.approx(ref.predict_proba_one(x1)[True], abs=1e-12)
    assert pred1["score"] != 0.5
    assert pred1["model_version"] == "lr@1"
    assert p.prequential["lr"].n == 1


def test_label_before_event_in_same_batch(tmp_path: Path) -> None:
    p = make_proc(tmp_path / "p")
    out = p.process("events", recs(lab(0, 0), ev(0), ev(1)))
    scores = [d["score"] for d in preds(out)]
    assert scores[0] == 0.5 and scores[1] < 0.5     # learned label 0 between the two events
    assert n_learned(p) == 1


def test_label_waiting_in_state_joins_its_event_after_a_restart(tmp_path: Path) -> None:
    """The processor knows which labels wait (to skip the lookup for every other event): after a
    restart it must learn that from the state, or the event would be scored and never trained."""
    p = make_proc(tmp_path / "p")
    p.process("labels", recs(lab(0, 1)))
    p.flush()
    p.close()
    q = make_proc(tmp_path / "p")
    q.process("events", recs(ev(0)))
    assert q.last_stats.labels_joined == 1 and n_learned(q) == 1
    q.process("labels", recs(lab(0, 1)))            # and the event now has its label
    assert dict(q.last_stats.dlq or {}) == {"duplicate_label": 1}


# -- (d) duplicate labels -----------------------------------------------------------
def test_second_label_goes_to_dlq(tmp_path: Path) -> None:
    p = make_proc(tmp_path / "p")
    p.process("events", recs(ev(0), lab(0, 1)))
    assert n_learned(p) == 1
    second = recs(lab(0, 0))
    out = p.process("labels", second)
    assert len(out) == 1 and out[0].topic == "dlq" and out[0].key == b"nsw"
    d = orjson.loads(out[0].value)
    assert d["reason"] == "duplicate_label" and d["event_id"] == "e0"
    assert d["topic"] == "labels" and d["offset"] == second[0].offset and d["partition"] == 0
    assert orjson.loads(d["value"]) == lab(0, 0)
    assert n_learned(p) == 1 and p.prequential["lr"].n == 1
    assert dict(p.last_stats.dlq or {}) == {"duplicate_label": 1}
    # after a flush, and after a restart, state alone says e0 is labelled: its stored prediction
    # with no open features (there is no marker of its own)
    p.flush()
    assert [k for k, _ in p.store.scan("e:")] == [] and [k for k, _ in p.store.scan("y:")] == []
    assert [d["reason"] for d in dlqs(p.process("labels", recs(lab(0, 1))))] == ["duplicate_label"]
    p.close()
    q = make_proc(tmp_path / "p")
    assert [d["reason"] for d in dlqs(q.process("labels", recs(lab(0, 1))))] == ["duplicate_label"]
    assert q.last_stats.labels_pending == 0 and [k for k, _ in q.store.scan("l:")] == []


def test_second_pending_label_goes_to_dlq(tmp_path: Path) -> None:
    p = make_proc(tmp_path / "p")
    out = p.process("labels", recs(lab(0, 1), lab(0, 1)))
    assert [d["reason"] for d in dlqs(out)] == ["duplicate_label"]
    p.process("events", recs(ev(0)))
    assert n_learned(p) == 1


# -- (e) bad records in a batch -----------------------------------------------------
def test_bad_records_mid_batch(tmp_path: Path) -> None:
    p = make_proc(tmp_path / "p")
    batch = recs(ev(0), b"{oops", ev(1), b"[1]", ev(2, nswprice="x"), ev(3), b"", ev(4))
    batch[6] = batch[6]._replace(value=None)       # a tombstone
    out = p.process("events", batch)
    assert [o.topic for o in out] == ["predictions", "dlq", "predictions", "dlq", "dlq",
                                      "predictions", "dlq", "predictions"]
    assert [d["event_id"] for d in preds(out)] == ["e0", "e1", "e3", "e4"]
    bad = dlqs(out)
    assert [d["reason"] for d in bad] == ["malformed_json", "not_an_object", "wrong_type", "malformed_json"]
    assert [d["offset"] for d in bad] == [batch[1].offset, batch[3].offset, batch[4].offset, batch[6].offset]
    assert bad[0]["value"] == "{oops" and bad[3]["value"] is None
    assert dict(p.last_stats.dlq or {}) == {"malformed_json": 2, "not_an_object": 1, "wrong_type": 1}
    assert p.last_stats.events == 4 and p.last_stats.predictions == 4


def test_oversized_goes_to_dlq(tmp_path: Path) -> None:
    p = PartitionProcessor(SPEC, PartitionStore(tmp_path / "p"), partition=2, max_event_bytes=64, clock=fixed_clock)
    out = p.process("events", recs(ev(0)))
    assert [d["reason"] for d in dlqs(out)] == ["oversized"]
    assert dlqs(out)[0]["partition"] == 2


# -- (f) state survives close and reopen ---------------------------------------------
def test_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "p0"
    p = make_proc(path)
    out = p.process("events", recs(ev(0), lab(0, 1), ev(1)))
    first = {orjson.loads(o.value)["event_id"]: o.value for o in out}
    p.process("labels", recs(lab(5, 1)))        # pending label for a future event
    p.flush()
    p.close()

    def late_clock() -> float:
        return T0_S + 123.0

    q = PartitionProcessor(SPEC, PartitionStore(path), partition=0, clock=late_clock)
    again = q.process("events", recs(ev(1), ev(0)))
    assert [o.value for o in again] == [first["e1"], first["e0"]]
    assert q.last_stats.duplicates == 2 and q.last_stats.predictions == 0
    # the label of e0 is remembered: a second one is a duplicate
    assert [d["reason"] for d in dlqs(q.process("labels", recs(lab(0, 0))))] == ["duplicate_label"]
    # the pending label of e5 is applied when e5 arrives
    q.process("events", recs(ev(5)))
    assert q.last_stats.labels_joined == 1
    q.close()


def test_unflushed_state_is_visible_before_flush(tmp_path: Path) -> None:
    p = make_proc(tmp_path / "p0")
    a = p.process("events", recs(ev(0)))
    assert p.store.pending > 0
    b = p.process("events", recs(ev(0)))
    assert a[0].value == b[0].value
    assert p.flush() > 0 and p.store.pending == 0
    p.close()


# -- online_retail: labels on the labels topic omit the key field (regression) -----------
def test_online_retail_labels_are_learned(tmp_path: Path) -> None:
    spec = load_spec("online_retail")
    p = PartitionProcessor(spec, PartitionStore(tmp_path / "r"), partition=0, clock=fixed_clock)
    rows = list(itertools.islice(iter_records("online_retail"), 3000))
    events = [r for r in rows if r["topic"] == "events"]
    labels = [r for r in rows if r["topic"] == "labels"]
    assert labels, "prefix must contain labels"
    p.process("events", to_records(events))
    out = p.process("labels", to_records(labels))
    assert dlqs(out) == []
    st = p.last_stats
    assert st.labels_joined + st.labels_pending == len(labels)
    assert st.labels_joined > 0
    # the pipeline learns label 0 provisionally at scoring time; a joined 1 corrects it
    seen = {e["value"]["event_id"] for e in events}
    ones = sum(1 for r in labels if r["value"]["event_id"] in seen and r["value"]["label"] == 1)
    assert n_learned(p) == len(events) + ones


# -- model snapshots -------------------------------------------------------------------------
def _labelled(n: int, start: int = 0) -> list:
    recs = []
    for i in range(start, start + n):
        ev = {"event_id": f"s{i}", "ts": i, **{f: ((i * 7 + k) % 11) / 10 for k, f in enumerate(SPEC.numeric)}}
        recs.append(Record(2 * i, b"nsw", orjson.dumps(ev), 1))
        recs.append(Record(2 * i + 1, b"nsw", orjson.dumps({"event_id": f"s{i}", "ts": i, "label": i % 3 == 0}), 1))
    return recs


def test_models_continue_from_their_signed_snapshot(tmp_path):
    key = b"k" * 32
    first, rest = _labelled(200), _labelled(50, start=200)
    straight = PartitionProcessor(SPEC, PartitionStore(tmp_path / "a"), 0, snapshot_key=key)
    straight.process("events", first)
    expected = straight.process("events", rest)

    p = PartitionProcessor(SPEC, PartitionStore(tmp_path / "b"), 0, snapshot_key=key)
    p.process("events", first)
    p.flush()
    p.close()
    again = PartitionProcessor(SPEC, PartitionStore(tmp_path / "b"), 0, snapshot_key=key)   # a restart
    assert again.models[0].n_learned == 200
    got = again.process("events", rest)

    def scored(outs):  # predictions carry no wall-clock figure: compare bytes
        return [o.value for o in outs if o.topic == "predictions"]

    assert scored(got) == scored(expected) and len(scored(got)) == 50
    assert again.prequential["lr"].get() == straight.prequential["lr"].get()


def test_tampered_or_foreign_snapshot_is_refused(tmp_path):
    from models.persistence import SnapshotError

    p = PartitionProcessor(SPEC, PartitionStore(tmp_path / "s"), 0, snapshot_key=b"k" * 32)
    p.process("events", _labelled(20))
    p.flush()
    key = next(k for k in p._snapshot_keys.values())
    blob = p.store.get(key)
    p.store.put(key, blob[:-5] + b"xxxxx")
    p.close()
    with pytest.raises(SnapshotError, match="does not match"):
        PartitionProcessor(SPEC, PartitionStore(tmp_path / "s"), 0, snapshot_key=b"k" * 32)
    with pytest.raises(SnapshotError):
        PartitionProcessor(SPEC, PartitionStore(tmp_path / "s"), 0, snapshot_key=b"other key, 32 bytes long......")


def test_the_reused_buffer_encoder_gives_msgspecs_bytes_at_any_size() -> None:
    import msgspec

    from streams.processor import _encoder

    dumps = _encoder()
    docs = [{"a": "x" * 10_000, "f": 0.1}, {"b": 1}, {"event_id": "e1", "features": {"k": 1e-7, "m": -0.0}},
            {"s": "é" * 3000}, []]
    outs = [dumps(d) for d in docs]
    assert outs == [msgspec.json.encode(d) for d in docs]
    assert all(type(o) is bytes for o in outs)     # copies: the buffer's next use changes none of them
