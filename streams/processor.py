"""Scoring one partition's micro-batches: the pure logic of a worker.

Why separate from the faust layer: this is where the semantics live (decode,
validate, dedupe by event id, predict-then-learn, delayed-label join), and it
is tested without a broker. The agent layer only moves batches in and out.

Semantics, per partition and in offset order (also inside a batch):

* an **event** is scored by every model with the state after every record
  before it; its feature vector and scores are stored under its event id, and
  the prediction is published;
* a **redelivered event** (same event id) is answered with the stored
  prediction, byte for byte, and trains nothing; a prediction holds no
  wall-clock figure, so an event processed again after a crash (before its
  state was written) gets the same bytes too: latency lives in the metrics
  and in the Kafka timestamps;
* a **label** (inline on the events topic, or on the labels topic) joins the
  stored features of its event, updates the prequential metrics with the score
  made at prediction time, then trains each model once; a label that comes
  before its event waits in state and is applied right after the event is
  scored; a second label for the same event goes to the dlq;
* anything that cannot be decoded or validated goes to the dlq with a reason.

>>> from streams.spec import load_spec
>>> import tempfile, orjson
>>> spec = load_spec("elec2")
>>> ev = {"event_id": "e1", "ts": 0, "period": 0.0, "nswprice": 0.1, "nswdemand": 0.2,
...       "vicprice": 0.3, "vicdemand": 0.4, "transfer": 0.5}
>>> with tempfile.TemporaryDirectory() as d:
...     p = PartitionProcessor(spec, PartitionStore(d + "/p0"), partition=0)
...     out = p.process("events", [Record(0, b"nsw", orjson.dumps(ev), 0)])
...     orjson.loads(out[0].value)["score"]
0.5
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from models import Prequential, build_model, persistence
from models.base import ModelSpec
from streams.features import Windows
from streams.schemas import Codec, Decoded, Reason
from streams.spec import PipelineSpec
from streams.state import PartitionStore


def _snapshot_key(spec: PipelineSpec, model: ModelSpec) -> str:
    """State key of a model's snapshot: changes when the model or its inputs change."""
    import hashlib

    ident = repr((model.kind, sorted(model.params.items()), spec.model_numeric, spec.categorical))
    return f"m:{model.name}:{hashlib.sha1(ident.encode()).hexdigest()[:10]}"


class Record(NamedTuple):
    """The fields of a consumed record we use (aiokafka's ConsumerRecord has them too)."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int          # Kafka record timestamp, epoch ms


class Output(NamedTuple):
    """A record to publish: logical topic, key, value."""

    topic: str              # "predictions" | "dlq"
    key: bytes | None
    value: bytes


@dataclass
class BatchStats:
    """What one batch did; the agent layer turns it into metrics."""

    events: int = 0
    labels: int = 0
    predictions: int = 0
    duplicates: int = 0
    labels_joined: int = 0
    labels_pending: int = 0
    dlq: Tally[str] | None = None
    latencies_s: list[float] | None = None


class PartitionProcessor:
    """Models, prequential metrics and state of one partition."""

    def __init__(self, spec: PipelineSpec, store: PartitionStore, partition: int, *,
                 max_event_bytes: int = 1_000_000, snapshot_key: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.store = store
        self.partition = partition
        self.codec = Codec(spec, max_event_bytes)
        self.models = [build_model(m, spec.model_numeric, spec.categorical) for m in spec.models]
        self.windows = Windows(spec.windows) if spec.windows else None
        self.prequential = {m.name: Prequential(spec.threshold) for m in spec.models}
        self.clock = clock
        self.last_stats = BatchStats()
        self.snapshot_key = snapshot_key
        self._snapshot_keys = {m.name: _snapshot_key(spec, m) for m in spec.models}
        self._learned_since_snapshot = False
        if snapshot_key is not None:
            self._restore()

    # -- model snapshots -------------------------------------------------------
    def _restore(self) -> None:
        """Continue each model (and its prequential metrics) from its signed snapshot, if any."""
        assert self.snapshot_key is not None
        for m in self.models:
            blob = self.store.get(self._snapshot_keys[m.name])
            if blob is None:
                continue
            snap = persistence.loads(blob, self.snapshot_key)   # refuses unsigned or tampered bytes
            m.estimator, m.n_learned = snap["estimator"], snap["n_learned"]
            self.prequential[m.name] = snap["prequential"]

    def _snapshot(self) -> None:
        assert self.snapshot_key is not None
        for m in self.models:
            self.store.put(self._snapshot_keys[m.name], persistence.dumps(
                {"estimator": m.estimator, "n_learned": m.n_learned, "prequential": self.prequential[m.name]},
                self.snapshot_key))
        self._learned_since_snapshot = False

    # -- batch entry point -------------------------------------------------
    def process(self, topic: str, records: Sequence[Any]) -> list[Output]:
        """Process one batch of ``topic`` ("events" or "labels"), in offset order."""
        stats = BatchStats(dlq=Tally(), latencies_s=[])
        out: list[Output] = []
        decode = self.codec.decode
        decoded = [decode(rec.value, rec.key) for rec in records]
        features = self._window_features(decoded) if self.windows is not None else {}
        for i, rec in enumerate(records):
            d = decoded[i]
            kind = d.kind
            if kind == "event":
                stats.events += 1
                self._event(d, rec, out, stats, features.get(i))
            elif kind == "label":
                stats.labels += 1
                self._label(d, rec, topic, out, stats)
            else:
                self._dlq(d.reason, d.detail, topic, rec, out, stats)
        self.last_stats = stats
        return out

    # -- events ---------------------------------------------------------------
    def _window_features(self, decoded: Sequence[Decoded]) -> dict[int, dict[str, float]]:
        """Window features of the batch's new events, in offset order, in one kernel call per window.

        Windows do not depend on labels or models, so they are computed for the
        whole batch first; redelivered events (stored, or repeated within the
        batch) are left out, so they change no window.
        """
        assert self.windows is not None
        get = self.store.get
        seen: set[str] = set()
        index: list[int] = []
        docs: list[dict[str, Any]] = []
        ts: list[int] = []
        for i, d in enumerate(decoded):
            if d.kind == "event" and d.event_id not in seen:
                seen.add(d.event_id)
                if get("p:" + d.event_id) is None:
                    index.append(i)
                    docs.append(d.doc)  # type: ignore[arg-type]
                    ts.append(d.ts)
        return dict(zip(index, self.windows.update_batch(docs, ts, get)))

    def _event(self, d: Decoded, rec: Any, out: list[Output], stats: BatchStats,
               feats: dict[str, float] | None = None) -> None:
        eid = d.event_id
        stored_pred = self.store.get("p:" + eid)
        if stored_pred is not None:
            stats.duplicates += 1
            out.append(Output("predictions", rec.key, stored_pred))
            return
        x = d.x
        assert x is not None
        if feats:
            x = {**x, **feats}
        scores: dict[str, float] | None = None
        if self.models:
            scores = {m.name: m.predict_proba_one(x) for m in self.models}
            champion = self.models[0]
            score = scores[champion.name]
            doc: dict[str, Any] = {
                "event_id": eid,
                "key": d.key,
                "ts": d.ts,
                "score": score,
                "class": int(score > self.spec.threshold),  # ties -> 0, as River's argmax
                "model": champion.name,
                "model_version": champion.version,
                "scores": scores,
                **({"features": feats} if feats else {}),
            }
        else:  # a features-only pipeline
            doc = {"event_id": eid, "key": d.key, "ts": d.ts, "features": feats}
        pred = orjson.dumps(doc)
        self.store.put("p:" + eid, pred)
        out.append(Output("predictions", rec.key, pred))
        stats.predictions += 1
        if rec.timestamp:
            stats.latencies_s.append(self.clock() - rec.timestamp / 1000.0)  # type: ignore[union-attr]
        if scores is None:
            return
        self.store.put("e:" + eid, orjson.dumps({"x": x, "s": scores}))
        pending = self.store.get("l:" + eid)
        if pending is not None:
            self.store.delete("l:" + eid)
            self._learn(eid, x, scores, orjson.loads(pending)["y"])
            stats.labels_joined += 1

    # -- labels ---------------------------------------------------------------
    def _label(self, d: Decoded, rec: Any, topic: str, out: list[Output], stats: BatchStats) -> None:
        eid = d.event_id
        assert d.y is not None
        store = self.store
        stored = store.get("e:" + eid)          # the common case: one lookup
        if stored is not None:
            doc = orjson.loads(stored)
            self._learn(eid, doc["x"], doc["s"], d.y)
            stats.labels_joined += 1
            return
        if store.get("y:" + eid) is not None or store.get("l:" + eid) is not None:
            self._dlq(Reason.DUPLICATE_LABEL.value, f"event {eid!r} already has a label", topic, rec, out,
                      stats, eid)
            return
        store.put("l:" + eid, orjson.dumps({"y": d.y, "ts": d.ts}))
        stats.labels_pending += 1

    def _learn(self, eid: str, x: dict[str, Any], scores: dict[str, float], y: float) -> None:
        for m in self.models:
            self.prequential[m.name].update(y, scores[m.name])
            m.learn_one(x, y)
        self._learned_since_snapshot = True
        # the feature snapshot has served its purpose: keep only a small "labelled" marker
        self.store.delete("e:" + eid)
        self.store.put("y:" + eid, b"1")

    # -- dead letters ---------------------------------------------------------
    def _dlq(self, reason: str, detail: str, topic: str, rec: Any, out: list[Output], stats: BatchStats,
             eid: str = "") -> None:
        stats.dlq[reason] += 1  # type: ignore[index]
        out.append(Output("dlq", rec.key, Codec.dlq_record(
            reason, detail, topic=topic, partition=self.partition, offset=rec.offset,
            key=rec.key, value=rec.value, event_id=eid)))

    # -- reporting ------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain-data figures of this partition (for the metrics topic)."""
        return {
            "partition": self.partition,
            "models": {m.name: {"version": m.version, **self.prequential[m.name].state()} for m in self.models},
        "late_events": self.windows.late if self.windows is not None else 0,
        }

    def flush(self) -> int:
        """Write window state and model snapshots, then every dirty key, in one RocksDB batch.

        Models, windows, stored predictions and labelled markers are written
        together, so after a crash they agree with each other and with the
        committed offsets (which faust writes only after this).
        """
        if self.windows is not None:
            self.windows.flush(self.store.put)
        if self.snapshot_key is not None and self._learned_since_snapshot:
            self._snapshot()
        return self.store.flush()

    def close(self) -> None:
        self.store.close()
