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

import bisect
import heapq
import math
import operator
import time
from collections import Counter as Tally
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
import numpy as np
import orjson

from models import build_model, persistence
from models.base import ModelSpec
from models.blend import Blend
from models.deep import numeric_matrix
from models.evaluate import prequential_for
from models.rules import RuleSet, score_name
from streams.features import Windows
from streams.retention import BUCKET_PREFIX as RETENTION_PREFIX
from streams.retention import WATERMARK_KEY as RETENTION_WATERMARK
from streams.retention import DedupeRetention
from streams.retention import bucket_of as retention_bucket
from streams.schemas import Codec, Decoded, Reason
from streams.spec import PipelineSpec
from streams.state import PartitionStore

#: New events scored per torch forward pass: large enough to amortise a pass
#: (~0.2 ms), small enough that a training step (every ``batch_size`` labels)
#: wastes little of it.
TORCH_CHUNK = 512


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


def _encoder() -> Callable[[Any], bytes]:
    """msgspec's JSON encoder, writing into one reused buffer, then copied out at its exact size.

    Why: ``Encoder.encode`` grows its output from a small buffer, reallocating
    on the way to a prediction's ~1 KB; with a batch's outputs kept alive that
    cost 2.35-2.6 µs a prediction, against 2.0-2.1 this way (same bytes; a
    worker's predictions, 100k encodes kept alive as a batch keeps them). One
    per processor: a partition is processed by one thread at a time.
    """
    encode_into = msgspec.json.Encoder().encode_into
    buf = bytearray(4096)

    def dumps(obj: Any) -> bytes:
        encode_into(obj, buf)       # the buffer ends where the message ends
        return bytes(buf)

    return dumps


#: ``_new(Output, (topic, key, value))``: a NamedTuple built in C (its ``__new__`` is Python code)
_new = tuple.__new__


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
    labels_timed_out: int = 0
    labels_late: int = 0                 # a real label after the timeout's default: counted, not learned
    dlq: Tally[str] | None = None
    latencies_s: list[float] | None = None
    rule_hits: Tally[str] | None = None
    inference_s: dict[str, float] | None = None     # torch model -> seconds of its forward pass


class Staged(NamedTuple):
    """A batch after :meth:`PartitionProcessor.stage`: what its scoring loop starts from."""

    decoded: list[Decoded]
    new: list[int]                            # indexes of its new events (not answered from state)
    features: dict[int, dict[str, float]]     # their window features, by index
    inputs: dict[int, dict[str, Any]]         # their fields and window features, by index
    rows: Any                                 # their numeric model inputs as a matrix, or None


def score_together(batches: Sequence[tuple[PartitionProcessor, Staged]]
                   ) -> list[tuple[dict[int, dict[str, float]], dict[str, float]] | None]:
    """Frozen torch models' scores of several partitions' staged batches, one forward pass per model
    for all the batches whose processors have the same :meth:`~PartitionProcessor.frozen_key`.

    Why: a forward pass of a small model costs about the same for one row
    as for hundreds (torch's per-operation dispatch on a CPU; copies, kernel
    launches and the sync on a GPU), and a worker at a moderate load fetches
    rounds of a few records per partition: a pass per partition-batch was a
    fifth of its CPU at half of its peak rate. The models of a group's first
    processor score all its rows. The scores are the bits each partition's
    own pass would give: a row's score does not depend on the other rows of
    its pass (``models.deep.ROW_BLOCK``, ``CUDA_PASS_ROWS``). Returns, per batch, its scores by
    record index (what :meth:`PartitionProcessor.process` takes as
    ``scores``) and the pass's seconds by model for a group's first batch
    (reported once); ``None`` for a batch no other shares a pass with (its
    processor has no frozen torch model, or the only one with these weights,
    or no new event): :meth:`~PartitionProcessor.process` scores it itself.
    """
    groups: dict[tuple[tuple[str, bytes], ...], list[int]] = {}
    for k, (proc, staged) in enumerate(batches):
        if staged.new and (key := proc.frozen_key()) is not None:
            groups.setdefault(key, []).append(k)
    out: list[tuple[dict[int, dict[str, float]], dict[str, float]] | None] = [None] * len(batches)
    for members in groups.values():
        if len(members) > 1:
            for k, scored in zip(members, _one_pass([batches[k] for k in members])):
                out[k] = scored
    return out


def _one_pass(batches: Sequence[tuple[PartitionProcessor, Staged]]
              ) -> list[tuple[dict[int, dict[str, float]], dict[str, float]]]:
    """:func:`score_together` on batches of one group: the first processor's models score every row."""
    xs: list[dict[str, Any]] = []
    for _, staged in batches:
        xs += [staged.inputs.get(i) or staged.decoded[i].x for i in staged.new]   # type: ignore[misc]
    all_rows = [staged.rows for _, staged in batches]
    rows = np.concatenate(all_rows) if all(r is not None for r in all_rows) else None
    out: list[tuple[dict[int, dict[str, float]], dict[str, float]]] = [
        ({i: {} for i in staged.new}, {}) for _, staged in batches]
    for m in batches[0][0].batch_models:
        t0 = time.perf_counter()
        ps = m.predict_proba_many(xs, rows)
        out[0][1][m.name] = time.perf_counter() - t0
        at = 0
        for (_, staged), (by_index, _) in zip(batches, out):
            for i, p in zip(staged.new, ps[at:at + len(staged.new)]):
                by_index[i][m.name] = p
            at += len(staged.new)
    return out


class PartitionProcessor:
    """Models, prequential metrics and state of one partition."""

    def __init__(self, spec: PipelineSpec, store: PartitionStore, partition: int, *,
                 max_event_bytes: int = 1_000_000, snapshot_key: bytes | None = None,
                 clock: Callable[[], float] = time.time, device: str | None = None,
                 dedupe_ttl_ms: int = 0) -> None:
        self.spec = spec
        self.store = store
        self.partition = partition
        self.codec = Codec(spec, max_event_bytes)
        #: JSON of what is kept until the next flush (predictions, open events): msgspec's bytes
        #: are sized to fit, orjson's start at 1 KiB and are shrunk, and keeping tens of thousands
        #: of those made each encode ~2 µs instead of ~0.4 (heap fragmentation)
        self._dumps = _encoder()
        reco = (spec.user, spec.item) if spec.user and spec.item else None
        arms = (spec.bandit_arm, spec.bandit_arms, spec.reward_at_least) if spec.task == "bandit" else None
        self.models = [build_model(m, spec.model_numeric, spec.categorical, device=device, reco_fields=reco,
                                   bandit_arms=arms)
                       for m in spec.models]
        self.bandit = spec.task == "bandit"
        #: hit-rate@k: the partition's most recent distinct items (state key "c:items")
        self._reco = [m for m in self.models if hasattr(m, "item")] if spec.hit_rate_k else []
        self._items: dict[str, None] = {}
        if self._reco and (raw := store.get("c:items")) is not None:
            self._items = dict.fromkeys(orjson.loads(raw))
        self.classifies = spec.task == "classification"
        #: torch models: ``predict_proba_many`` over a micro-batch's new events; the rest score event by event
        self.batch_models = [m for m in self.models if hasattr(m, "predict_proba_many")]
        #: the models the labels train (``learn = false`` in the spec: a frozen model, scored and evaluated only)
        self._frozen = frozenset(m.name for m in spec.models if not m.learn)
        self._relist()
        self.champion = next(m for m in self.models if m.name == spec.champion.name) if self.models else None
        self.decision = spec.decision_name if self.models else "features"
        self.blend = Blend(spec.blend, [m.name for m in spec.deciders]) if spec.blend is not None else None
        self.rules = RuleSet(spec.rules, spec.rule_fields) if spec.rules else None
        #: what the rules read, split by where it comes from: event fields and features, the decision's
        #: score, each model's score (``score_<name>``); the rest of an event is not put in their context
        score_names = {m.name: score_name(m.name) for m in spec.models}
        used = self.rules.used if self.rules is not None else ()
        self._rule_scores = [(k, n) for k, n in score_names.items() if n in used]
        self._rule_score = "score" in used
        self._rule_fields = [n for n in used if n != "score" and n not in score_names.values()]
        self.windows = Windows(spec.windows) if spec.windows else None
        names = [m.name for m in spec.models] + (["blend"] if self.blend is not None else [])
        self.prequential = {n: prequential_for(spec.task, spec.threshold) for n in names}
        #: (label, scores) of events evaluated in this batch, counted by the prequential metrics at
        #: its end: metrics change no score, and one ``update_many`` per model costs less
        self._evaluated: list[tuple[float, dict[str, float]]] = []
        self.clock = clock
        self.last_stats = BatchStats()
        self.snapshot_key = snapshot_key
        self._snapshot_keys = {m.name: _snapshot_key(spec, m) for m in spec.models}
        if spec.blend is not None:
            self._snapshot_keys["blend"] = _snapshot_key(spec, ModelSpec(
                "blend", spec.blend.policy, {"deciders": ",".join(m.name for m in spec.deciders),
                                             **{f"w_{k}": v for k, v in sorted(spec.blend.weights.items())}}))
        self._learned_since_snapshot = False
        #: scored events waiting for their label, since the last flush: event id -> (doc, on disk?).
        #: Kept as objects and written as "e:<event id>" at flush only: a label that comes within
        #: the same flush interval (the common case) costs no JSON round trip and no RocksDB write.
        self._open: dict[str, tuple[dict[str, Any], bool]] = {}
        #: event ids whose label came first and waits in state as "l:<event id>": most events have
        #: none, and knowing it saves each of them a RocksDB lookup. Orphan labels stay in state (and
        #: here) until the dedupe retention forgets them.
        self._waiting: set[str] = {k[2:] for k, _ in store.scan("l:")}
        self._restored: set[str] = set()
        if snapshot_key is not None:
            self._restore()
        #: open events' numeric model inputs as matrix rows (see _model_rows), until their label or
        #: the next flush; only when every torch model reads ``spec.model_numeric`` in that order
        self._rows: dict[str, Any] = {}
        self._rows_ok = bool(self.batch_models) and self.windows is not None and all(
            tuple(m.numeric) == spec.model_numeric for m in self.batch_models)
        self._x_getter = operator.itemgetter(*spec.numeric) if spec.numeric else (lambda x: ())
        #: dedupe retention (streams/retention.py): event ids forgotten ``dedupe_ttl_ms`` of event
        #: time after their event; 0: remembered for ever
        self._retention: DedupeRetention | None = None
        if dedupe_ttl_ms > 0:
            raw_wm = store.get(RETENTION_WATERMARK)
            self._retention = DedupeRetention(
                dedupe_ttl_ms, store.get, store.delete,
                known={retention_bucket(k) for k, _ in store.scan(RETENTION_PREFIX)},
                watermark=None if raw_wm is None else int(raw_wm), scan=store.scan)
        #: label timeouts: a heap of (deadline, event id), mirrored in state as "t:<event id>"
        self._timeout = spec.label_timeout_ms if spec.label_default is not None and self.models else None
        self._provisional = self._timeout is not None and spec.label_provisional
        self._deadlines: list[tuple[int, str]] = []
        #: largest event time seen on events and on labels (persisted as "w:events", "w:labels")
        self._wm: dict[str, int | None] = {"event": None, "label": None}
        if self._timeout is not None:
            self._deadlines = [(int(v), k[2:]) for k, v in store.scan("t:")]
            heapq.heapify(self._deadlines)
            for kind in self._wm:
                raw = store.get("w:" + kind)
                self._wm[kind] = None if raw is None else int(raw)

    # -- model snapshots -------------------------------------------------------
    def _restore(self) -> None:
        """Continue each model (and its prequential metrics) from its signed snapshot, if any."""
        assert self.snapshot_key is not None
        for m in list(self.models):
            blob = self.store.get(self._snapshot_keys[m.name])
            if blob is None:
                continue
            snap = persistence.loads(blob, self.snapshot_key)   # refuses unsigned or tampered bytes
            if "deep" in snap:   # torch: the checkpoint bytes, loaded with weights_only=True
                new = type(m).loads(snap["deep"], device=m.device.type)
                for models in (self.models, self.batch_models):
                    models[models.index(m)] = new
                if self.champion is m:
                    self.champion = new
                self._relist()
            elif "policy" in snap:
                m.policy, m.n_learned = snap["policy"], snap["n_learned"]
            else:
                m.estimator, m.n_learned = snap["estimator"], snap["n_learned"]
            self.prequential[m.name] = snap["prequential"]
            self._restored.add(m.name)
        if self.blend is not None and (blob := self.store.get(self._snapshot_keys["blend"])) is not None:
            snap = persistence.loads(blob, self.snapshot_key)
            self.blend, self.prequential["blend"] = snap["blend"], snap["prequential"]

    def _relist(self) -> None:
        """The lists of learning models, after ``self.models`` changed."""
        self.learners = [m for m in self.models if m.name not in self._frozen]
        self.batch_learners = [m for m in self.batch_models if m.name not in self._frozen]

    def _snapshot(self) -> None:
        assert self.snapshot_key is not None
        for m in self.models:
            if m in self.batch_models:
                doc = {"deep": m.dumps(), "prequential": self.prequential[m.name]}
            elif self.bandit:
                doc = {"policy": m.policy, "n_learned": m.n_learned, "prequential": self.prequential[m.name]}
            else:
                doc = {"estimator": m.estimator, "n_learned": m.n_learned, "prequential": self.prequential[m.name]}
            self.store.put(self._snapshot_keys[m.name], persistence.dumps(doc, self.snapshot_key))
        if self.blend is not None:
            self.store.put(self._snapshot_keys["blend"], persistence.dumps(
                {"blend": self.blend, "prequential": self.prequential["blend"]}, self.snapshot_key))
        self._learned_since_snapshot = False

    def has_history(self, name: str) -> bool:
        """True when model ``name`` continued from a snapshot or has learned here."""
        return name in self._restored or any(m.name == name and m.n_learned for m in self.models)

    def swap_weights(self, name: str, checkpoint: Any) -> str:
        """Hot-swap a torch model's weights from a checkpoint (a DeepModel or its ``state()``); its new version.

        Called between batches only: a swap never lands in the middle of a batch.
        """
        model = next((m for m in self.batch_models if m.name == name), None)
        if model is None:
            raise KeyError(f"no torch model named {name!r} in pipeline {self.spec.name!r}")
        model.load_weights_from(checkpoint)
        self._learned_since_snapshot = True     # the next flush snapshots the new weights
        return model.version

    # -- batch entry point -------------------------------------------------
    def stage(self, records: Sequence[Any]) -> Staged:
        """A batch's steps before its records are scored one by one: decode, dedupe, window features.

        :meth:`process` calls it; a worker calls it first for every partition
        of a fetch round (``BatchScorer.handle_round``), so that frozen torch
        models can score all the round's new events in one pass
        (:func:`score_together`), and then :meth:`process` with what it returned. Nothing else may touch this
        partition in between.
        """
        decode = self.codec.decode
        decoded = [decode(rec.value, rec.key) for rec in records]
        new = self._new_events(decoded)
        # each new event's window features, and its model inputs (its fields and those), built once
        features, matrix = self._window_features(decoded, new) if self.windows is not None else ({}, None)
        inputs = {i: {**decoded[i].x, **f} for i, f in features.items()}  # type: ignore[dict-item]
        rows = self._model_rows(decoded, new, matrix) if matrix is not None and self._rows_ok else None
        return Staged(decoded, new, features, inputs, rows)

    def frozen_key(self) -> tuple[tuple[str, bytes], ...] | None:
        """What another partition's torch models must match to score this one's events in the same
        pass: each model's name and :meth:`~models.deep.DeepModel.scoring_key`. ``None`` when this
        partition has no torch model, or one that learns (its weights move within a batch)."""
        if not self.batch_models or self.batch_learners:
            return None
        return tuple((m.name, m.scoring_key()) for m in self.batch_models)

    def process(self, topic: str, records: Sequence[Any], staged: Staged | None = None,
                scores: Mapping[int, dict[str, float]] | None = None,
                inference_s: Mapping[str, float] | None = None) -> list[Output]:
        """Process one batch of ``topic`` ("events" or "labels"), in offset order.

        ``staged``: :meth:`stage`'s result for these ``records``, if the
        caller ran it. ``scores``: the frozen torch models' scores of its new
        events (:func:`score_together`), by record index, and ``inference_s``
        the time that pass took, to report.
        """
        stats = BatchStats(dlq=Tally(), latencies_s=[], rule_hits=Tally(), inference_s=dict(inference_s or {}))
        out: list[Output] = []
        prep = self.stage(records) if staged is None else staged
        decoded, new, features, inputs, rows = prep.decoded, prep.new, prep.features, prep.inputs, prep.rows
        fresh = set(new)
        # torch: new events are scored up to TORCH_CHUNK at a time, and again from the current one on
        # after a training step (labels earlier in the batch), so that every event sees the
        # weights after every record before it, whatever the micro-batch boundaries
        batch_scores: Mapping[int, dict[str, float]] = {}
        scored_at: tuple[int, ...] | None = None
        if scores is not None:      # frozen models, scored already: no step can come
            assert not self.batch_learners, "precomputed scores of a torch model that learns"
            batch_scores, scored_at = scores, ()
        position = {j: k for k, j in enumerate(new)} if self.batch_models else {}
        labels_at = [i for i, d in enumerate(decoded) if d.kind == "label"] if self.batch_models else []
        for i, rec in enumerate(records):
            d = decoded[i]
            kind = d.kind
            if kind == "event":
                stats.events += 1
                if self._timeout is not None:
                    self._expire("event", d.ts, stats)
                if self.batch_models and i in fresh:
                    steps = self._torch_steps() if self.batch_learners else ()    # frozen: no step
                    if i not in batch_scores or steps != scored_at:
                        k = position[i]
                        end = self._chunk_end(i, k, new, labels_at)
                        batch_scores = self._batch_scores(decoded, new[k:end], inputs, stats,
                                                          None if rows is None else rows[k:end])
                        scored_at = steps
                    if rows is not None:
                        self._rows[d.event_id] = rows[position[i]]
                self._event(d, rec, out, stats, features.get(i), batch_scores.get(i), i in fresh, inputs.get(i))
            elif kind == "label":
                stats.labels += 1
                if self._timeout is not None:
                    self._expire("label", d.ts, stats)
                self._label(d, rec, topic, out, stats)
            else:
                self._dlq(d.reason, d.detail, topic, rec, out, stats)
        self._count_evaluated()
        self.last_stats = stats
        return out

    def _count_evaluated(self) -> None:
        """Give the batch's evaluated (label, score) pairs to the prequential metrics, in label order."""
        done = self._evaluated
        if done:
            ys = [y for y, _ in done]
            for name, preq in self.prequential.items():
                preq.update_many(ys, [s[name] for _, s in done])
            done.clear()

    # -- events ---------------------------------------------------------------
    def _new_events(self, decoded: Sequence[Decoded]) -> list[int]:
        """Indexes of the batch's new events: not stored, not repeated earlier in the batch.

        Redelivered events are answered from state and change nothing, so the
        batch-wide steps (windows, torch inference) leave them out.
        """
        get = self.store.get
        seen: set[str] = set()
        index: list[int] = []
        for i, d in enumerate(decoded):
            if d.kind == "event" and d.event_id not in seen:
                seen.add(d.event_id)
                if get("p:" + d.event_id) is None:
                    index.append(i)
        return index

    def _window_features(self, decoded: Sequence[Decoded],
                         new: Sequence[int]) -> tuple[dict[int, dict[str, float]], Any]:
        """Window features of the batch's new events, in offset order, in one kernel call per window;
        and as a matrix (a row per new event).

        Windows do not depend on labels or models, so they are computed for the
        whole batch first.
        """
        assert self.windows is not None
        docs = [decoded[i].doc for i in new]
        ts = [decoded[i].ts for i in new]
        feats, matrix = self.windows.update_columns(docs, ts, self.store.get)  # type: ignore[arg-type]
        return dict(zip(new, feats)), matrix

    def _model_rows(self, decoded: Sequence[Decoded], new: Sequence[int], matrix: Any) -> Any:
        """The new events' numeric model inputs (``spec.model_numeric``) as a float matrix.

        Why: the torch models read them from here instead of from each event's
        dict (20 lookups a row, twice: to score and to train); the window
        features are a matrix already. The same float64 values as a model reads
        from the dicts (``models.deep.numeric_matrix`` either way), NaN where a
        dict has none, so the same scores.
        """
        xs = [decoded[i].x for i in new]
        return np.hstack([numeric_matrix(xs, self.spec.numeric, self._x_getter), matrix])  # type: ignore[arg-type]

    def _torch_steps(self) -> tuple[int, ...]:
        return tuple(m.steps for m in self.batch_models)

    def _chunk_end(self, i: int, k: int, new: Sequence[int], labels_at: Sequence[int]) -> int:
        """Where the torch chunk that starts at new event ``new[k] == i`` should end.

        Why: a chunk scored past the batch's next training step is scored
        again after it (see :meth:`process`), so rows past that step are wasted
        work: with inline labels, a chunk of TORCH_CHUNK events scored two rows
        per event. No step can come before the label that fills the emptiest
        model's buffer, so the chunk stops at the last new event before that
        label. Only a guess: an event can train too (a label that came before
        it, a provisional or timed-out label), and then it is scored again,
        so scores never depend on it.
        """
        if not self.batch_learners:        # frozen torch models: no step can come, one pass for the rest
            return len(new)                # (the same bits as in chunks: rows padded to ROW_BLOCK)
        need = min(m.until_step for m in self.batch_learners)
        at = bisect.bisect_right(labels_at, i) + need - 1
        if at >= len(labels_at):
            return k + TORCH_CHUNK
        return min(k + TORCH_CHUNK, max(k + 1, bisect.bisect_left(new, labels_at[at], lo=k)))

    def _batch_scores(self, decoded: Sequence[Decoded], new: Sequence[int],
                      inputs: Mapping[int, dict[str, Any]], stats: BatchStats,
                      rows: Any = None) -> dict[int, dict[str, float]]:
        """Torch scores of the events ``new``: one forward pass per model.

        :meth:`process` calls this for up to ``TORCH_CHUNK`` new events at a
        time, and again from the current event on after a training step (the
        batch's labels filled a step), so each event is scored by the weights
        after every record before it: torch scores, like River's, do not
        depend on where micro-batches are cut, and a replay or a restart
        reproduces them.
        """
        if not new:
            return {}
        xs = [inputs.get(i) or decoded[i].x for i in new]
        out: dict[int, dict[str, float]] = {i: {} for i in new}
        for m in self.batch_models:
            t0 = time.perf_counter()
            for i, p in zip(new, m.predict_proba_many(xs, rows)):
                out[i][m.name] = p
            spent = stats.inference_s  # type: ignore[union-attr]
            spent[m.name] = spent.get(m.name, 0.0) + time.perf_counter() - t0
        return out

    def _event(self, d: Decoded, rec: Any, out: list[Output], stats: BatchStats,
               feats: dict[str, float] | None = None, pre_scores: dict[str, float] | None = None,
               fresh: bool = False, inputs: dict[str, Any] | None = None) -> None:
        eid = d.event_id
        # fresh: _new_events already found no stored prediction (saves a second lookup)
        stored_pred = None if fresh else self.store.get("p:" + eid)
        if stored_pred is not None:
            stats.duplicates += 1
            out.append(Output("predictions", rec.key, stored_pred))
            return
        x = d.x if inputs is None else inputs   # inputs: the event's fields and window features
        assert x is not None
        scores: dict[str, float] | None = None
        if self.models:
            scores = self._scores(x, pre_scores)
            doc = self._decide(eid, d, x, scores, feats, stats)
        else:  # a features-only pipeline
            doc = {"event_id": eid, "key": d.key, "ts": d.ts, "features": feats}
        pred = self._dumps(doc)
        self.store.put("p:" + eid, pred)
        if self._retention is not None and (gone := self._retention.add(eid, d.ts)):
            self._forget(gone)
        out.append(_new(Output, ("predictions", rec.key, pred)))
        stats.predictions += 1
        if rec.timestamp:
            stats.latencies_s.append(self.clock() - rec.timestamp / 1000.0)  # type: ignore[union-attr]
        if scores is None:
            return
        self._open[eid] = ({"x": x, "s": scores}, False)
        if self._provisional:        # learn the default label now; the real one corrects it later
            self._train(x, scores, self.spec.label_default, eid)  # type: ignore[arg-type]
        if self._timeout is not None:
            deadline = d.ts + self._timeout
            heapq.heappush(self._deadlines, (deadline, eid))
            self.store.put("t:" + eid, str(deadline).encode())
        pending = self.store.get("l:" + eid) if eid in self._waiting else None
        if pending is not None:
            self._waiting.discard(eid)
            self.store.delete("l:" + eid)
            self._join(eid, {"x": x, "s": scores}, orjson.loads(pending)["y"])
            stats.labels_joined += 1

    def _scores(self, x: dict[str, Any], pre: dict[str, float] | None) -> dict[str, float]:
        """Every model's score of ``x`` (spec order), then the blend's."""
        scores: dict[str, float] = {}
        if self.bandit:       # the "score" of a policy is the action it chose
            return {m.name: m.choose(x) for m in self.models}
        for m in self.models:
            if m in self.batch_models:
                scores[m.name] = pre[m.name] if pre is not None else m.predict_proba_many([x])[0]
            else:
                scores[m.name] = m.score_one(x)
        for k, v in scores.items():
            if not math.isfinite(v):       # a diverged model: publish "don't know", never NaN
                scores[k] = 0.5 if self.classifies else 0.0
        if self.blend is not None:
            scores["blend"] = self.blend.score(scores)
        if self._reco:
            self._rank(x, scores)
        return scores

    def _rank(self, x: dict[str, Any], scores: dict[str, Any]) -> None:
        """Rank the event's item among the partition's recent items, per recommender (for hit-rate@k).

        The rank (0 = first) is stored with the scores and counted when the
        label arrives: a relevant item (label >= relevant_at_least) is a hit
        if it was in the top k when the event was scored.
        """
        item = x.get(self.spec.item)  # type: ignore[arg-type]
        for m in self._reco:
            mine = scores[m.name]
            scores[f"rank:{m.name}"] = sum(
                1 for c in self._items if c != item and m.score_one({**x, m.item: c}) > mine)
        self._items.pop(item, None)        # most recent last; bounded
        self._items[item] = None
        while len(self._items) > self.spec.hit_candidates:
            del self._items[next(iter(self._items))]

    def _decide(self, eid: str, d: Decoded, x: dict[str, Any], scores: dict[str, float],
                feats: dict[str, float] | None, stats: BatchStats) -> dict[str, Any]:
        """The published prediction: the decision's score, after the rules, with its reasons."""
        if self.bandit:
            return {"event_id": eid, "key": d.key, "ts": d.ts, "action": scores[self.decision],
                    "model": self.decision, "model_version": self.champion.version, "actions": scores,
                    **({"features": feats} if feats else {})}
        score = scores[self.decision]
        cls = int(score > self.spec.threshold) if self.classifies else None  # ties -> 0, as River's argmax
        if self.blend is not None:
            version = "+".join([m.version for m in self.models if m.name in self.blend.models] + [self.blend.version])
        else:
            version = self.champion.version
        doc: dict[str, Any] = {
            "event_id": eid,
            "key": d.key,
            "ts": d.ts,
            "score": score,
            **({"class": cls} if self.classifies else {}),
            "model": self.decision,
            "model_version": version,
            "scores": {k: v for k, v in scores.items() if not k.startswith("rank:")} if self._reco else scores,
        }
        if self.rules is not None:
            # what the rules read, no more: the event's fields and features, then the scores
            ctx = {n: x[n] for n in self._rule_fields if n in x}
            if self._rule_score:
                ctx["score"] = score
            for k, name in self._rule_scores:
                ctx[name] = scores[k]
            final, cls, outcome = self.rules.apply(score, self.spec.threshold, ctx)
            if outcome.hits:
                doc["score"] = final
                if self.classifies:
                    doc["class"] = cls
                doc["rules"] = list(outcome.hits)
                doc["reasons"] = list(outcome.reasons)
                stats.rule_hits.update(outcome.hits)  # type: ignore[union-attr]
        if feats:
            doc["features"] = feats
        return doc

    def _expire(self, kind: str, ts: int, stats: BatchStats) -> None:
        """Give the default label to every event whose deadline is before the watermark.

        The watermark is event time that both inputs have passed: the smaller
        of the largest event ``ts`` and the largest label ``ts`` seen in this
        partition. So a replay that reads events far ahead of their labels
        (two topics, consumed as fast as possible) does not time out events
        whose labels are merely still in the labels topic. If labels fall more
        than a whole timeout behind (or none came yet), the watermark is the
        event time minus the timeout: idle labels cannot stop timeouts forever.
        Timeouts fire in deadline order, before the record that moved the
        watermark is processed.
        """
        wm_seen = self._wm[kind]
        if wm_seen is None or ts > wm_seen:
            self._wm[kind] = ts
        ev, lab = self._wm["event"], self._wm["label"]
        if ev is None:
            return
        timeout = self._timeout
        assert timeout is not None
        wm = ev - timeout if lab is None or ev - lab > timeout else min(ev, lab)
        heap = self._deadlines
        while heap and heap[0][0] < wm:
            _, eid = heapq.heappop(heap)
            self.store.delete("t:" + eid)
            found = self._open_doc(eid)
            if found is None:             # a restart replayed it, or it was never scored
                continue
            doc = found[0]
            if "y" in doc:                # labelled before the deadline: trained then, evaluated now
                self._evaluated.append((doc["y"], doc["s"]))
                self._learned_since_snapshot = True
                self._close(eid)
                self.store.put("y:" + eid, b"d")
            else:                         # no label: the default
                self._learn(eid, doc["x"], doc["s"], self.spec.label_default, marker=b"d")  # type: ignore[arg-type]
                stats.labels_timed_out += 1

    # -- labels ---------------------------------------------------------------
    def _label(self, d: Decoded, rec: Any, topic: str, out: list[Output], stats: BatchStats) -> None:
        eid = d.event_id
        assert d.y is not None
        store = self.store
        found = self._open_doc(eid)             # the common case: in memory, or one lookup
        if found is not None:
            doc, on_disk = found
            if "y" not in doc:
                self._join(eid, doc, d.y, on_disk)
                stats.labels_joined += 1
                return
        marker = store.get("y:" + eid)
        if marker == b"d":                       # its deadline passed first: a late label
            stats.labels_late += 1
            return
        # a stored prediction with no open features: its event was labelled (or closed) already
        if (found is not None or marker is not None or eid in self._waiting
                or (self.models and store.get("p:" + eid) is not None)):
            self._dlq(Reason.DUPLICATE_LABEL.value, f"event {eid!r} already has a label", topic, rec, out,
                      stats, eid)
            return
        store.put("l:" + eid, self._dumps({"y": d.y, "ts": d.ts}))
        self._waiting.add(eid)
        stats.labels_pending += 1
        if self._retention is not None and (gone := self._retention.add(eid, d.ts)):
            self._forget(gone)            # a label whose event never comes is forgotten too

    def _join(self, eid: str, doc: dict[str, Any], y: float, on_disk: bool = False) -> None:
        """A label meets its event's stored features and scores.

        Without a label timeout: evaluate and train now. With one, the event's
        outcome is final only at its deadline (a return may still come), so
        the label trains the models now and waits in the event's state; the
        prequential metrics count the event at its deadline with its final
        label. Evaluating at the label instead would count every early return
        but only the negatives whose deadline passed: a biased sample.
        """
        if self._timeout is None:
            self._learn(eid, doc["x"], doc["s"], y)
            return
        if not (self._provisional and y == self.spec.label_default):
            self._train(doc["x"], doc["s"], y, eid)
        self._open[eid] = ({**doc, "y": y}, on_disk)

    def _learn(self, eid: str, x: dict[str, Any], scores: dict[str, float], y: float,
               marker: bytes | None = None) -> None:
        if self.bandit:
            self._reward(eid, x, scores, y, marker)
            return
        self._evaluated.append((y, scores))
        if self._reco and y >= self.spec.relevant_at_least:
            for name, preq in self.prequential.items():
                if f"rank:{name}" in scores:
                    preq.update_hit(scores[f"rank:{name}"] < self.spec.hit_rate_k)
        if not (self._provisional and y == self.spec.label_default):   # already learned at scoring time
            self._train(x, scores, y, eid)
        self._learned_since_snapshot = True
        # the feature snapshot has served its purpose. Labelled is what state says by a stored
        # prediction ("p:") with no open features ("e:"): no marker of its own, one write less per
        # event. Only a timeout's default leaves one, "y:" = b"d": a real label after it is late.
        self._close(eid)
        if self._timeout is not None:
            self.store.delete("t:" + eid)
        if marker is not None:
            self.store.put("y:" + eid, marker)

    def _reward(self, eid: str, x: dict[str, Any], actions: dict[str, Any], y: float, marker: bytes | None) -> None:
        """A bandit's reward: counted if the policy chose the logged action, and learned then (replay)."""
        logged = x.get(self.spec.bandit_arm)  # type: ignore[arg-type]
        for m in self.models:
            self.prequential[m.name].update(m.reward(y), actions[m.name], logged)
            if m.name not in self._frozen:
                m.learn(actions[m.name], x, y)
        self._learned_since_snapshot = True
        self._close(eid)
        if marker is not None:
            self.store.put("y:" + eid, marker)

    def _open_doc(self, eid: str) -> tuple[dict[str, Any], bool] | None:
        """The stored features and scores of a scored event not yet closed, and whether they are on disk."""
        found = self._open.get(eid)
        if found is not None:
            return found
        raw = self.store.get("e:" + eid)
        return None if raw is None else (orjson.loads(raw), True)

    def _forget(self, event_ids: list[str]) -> None:
        """Past the dedupe retention: delete what state holds of these events (see streams/retention.py)."""
        delete = self.store.delete
        for eid in event_ids:
            delete("p:" + eid)
            delete("y:" + eid)
            delete("l:" + eid)
            self._waiting.discard(eid)
            self._close(eid)

    def _close(self, eid: str) -> None:
        """Forget an event's features and scores (labelled, or timed out)."""
        self._rows.pop(eid, None)
        found = self._open.pop(eid, None)
        if found is None or found[1]:
            self.store.delete("e:" + eid)

    def _train(self, x: dict[str, Any], scores: dict[str, float], y: float, eid: str = "") -> None:
        row = self._rows.get(eid) if self._rows else None
        for m in self.learners:
            if row is not None and m in self.batch_models:
                m.learn_one(x, y, row)        # the same numbers as x's, read without a lookup each
            else:
                m.learn_one(x, y)
        if self.blend is not None and self.classifies:
            self.blend.learn_one(scores, int(y))
        self._learned_since_snapshot = True

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
        self._count_evaluated()
        return {
            "partition": self.partition,
            "models": {name: {"version": self.version_of(name), **preq.state()}
                       for name, preq in self.prequential.items()},
        "late_events": self.windows.late if self.windows is not None else 0,
        }

    def version_of(self, name: str) -> str:
        """Version of model ``name`` (or of the blend)."""
        if name == "blend" and self.blend is not None:
            return self.blend.version
        return next(m.version for m in self.models if m.name == name)

    def flush(self) -> int:
        """Write window state and model snapshots, then every dirty key, in one RocksDB batch.

        Models, windows, stored predictions and open or closed events are written
        together, so after a crash they agree with each other and with the
        committed offsets (which faust writes only after this).
        """
        self.prepare()
        return self.store.flush()

    def prepare(self) -> None:
        """Put everything held in memory (open events, windows, snapshots) into the store's pending writes.

        A worker calls this, sends the pending writes to the changelog, waits
        for delivery, and only then writes the store (``store.flush``).
        """
        self._count_evaluated()
        for eid, (doc, _) in self._open.items():
            self.store.put("e:" + eid, self._dumps(doc))
        self._open.clear()
        self._rows.clear()
        if self.windows is not None:
            self.windows.flush(self.store.put, self.store.put_many, self.store.get)
        if self._reco:
            self.store.put("c:items", orjson.dumps(list(self._items)))
        if self._timeout is not None:
            for kind, wm in self._wm.items():
                if wm is not None:
                    self.store.put("w:" + kind, str(wm).encode())
        if self.snapshot_key is not None and self._learned_since_snapshot:
            self._snapshot()
        if self._retention is not None:
            for k, v in self._retention.take_dirty():
                self.store.put(k, v)

    def close(self) -> None:
        self.store.close()
