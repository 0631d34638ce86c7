"""A fetch round handled at once: one torch pass for every partition, the same bytes out.

``BatchScorer.handle_round`` stages each partition's batch (decode, dedupe,
window features), scores the new events of all partitions whose frozen torch
models are the same in one forward pass per model, then scores and publishes
each batch. These tests hold it to what ``handle`` gives batch by batch:
the same published bytes per partition, the same state, and fewer passes
only where the weights really are the same.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks.rounds import KeepingProducer, random_weights
from models.deep import DeepModel
from streams.agents import BatchScorer
from streams.processor import Record
from streams.settings import Settings
from streams.spec import load_spec
from streams.state import PartitionStore

#: the benchmarks' `full` pipeline: 9 tumbling windows, a River model, a frozen Wide & Deep, a blend, rules
FULL = "benchmarks/pipelines/full.toml"
PARTITIONS = 4


def rounds(n_rounds: int, seed: int = 7) -> list[list[tuple[int, list[dict[str, Any]], list[dict[str, Any]]]]]:
    """Per round, per partition: a few events, and labels of earlier events (a labels topic batch)."""
    rng = random.Random(seed)
    out, n = [], 0
    for r in range(n_rounds):
        one = []
        for p in range(PARTITIONS):
            evs = []
            for _ in range(rng.randint(1, 6)):
                evs.append({"event_id": f"e{n}", "ts": 1_000 * n, "user": f"u{rng.randint(0, 9)}",
                            "merchant": f"m{rng.randint(0, 4)}", "country": f"c{rng.randint(0, 2)}",
                            "amount": round(rng.lognormvariate(3, 1), 2), "quantity": rng.randint(1, 5)})
                n += 1
            if r % 3 == 2 and evs:          # a redelivered event: answered from state
                evs.append(evs[0])
            labels = [{"event_id": e["event_id"], "ts": e["ts"], "label": rng.randint(0, 1)} for e in evs[:2]]
            one.append((p, evs, labels))
        out.append(one)
    return out


def run(tmp: Path, by_round: bool, swap: dict[int, DeepModel], shared: DeepModel,
        passes: list[int], monkeypatch: pytest.MonkeyPatch) -> tuple[KeepingProducer, BatchScorer]:
    s = Settings(state_dir=tmp, changelog=False, metrics_port=0, snapshot_key="k" * 32)
    producer = KeepingProducer()
    scorer = BatchScorer(s, load_spec(FULL), producer=producer)  # type: ignore[arg-type]
    asyncio.run(scorer.open_partitions(range(PARTITIONS)))
    for p, proc in scorer.processors.items():
        proc.swap_weights("deep", swap.get(p, shared).state())
    real = DeepModel.predict_proba_many
    monkeypatch.setattr(DeepModel, "predict_proba_many",
                        lambda self, xs, num=None: passes.append(len(xs)) or real(self, xs, num))
    offset = {(t, p): 0 for t in ("events", "labels") for p in range(PARTITIONS)}

    def batch(logical: str, p: int, docs: list[dict[str, Any]]) -> tuple[str, int, list[Record], None]:
        at = offset[(logical, p)]
        offset[(logical, p)] = at + len(docs)
        return (s.topic(logical), p, [Record(at + i, f"k{p}".encode(), orjson.dumps(d), 1_000)
                                      for i, d in enumerate(docs)], None)

    for one in rounds(12):
        todo = [batch("events", p, evs) for p, evs, _ in one if evs]
        todo += [batch("labels", p, labs) for p, _, labs in one if labs]
        if by_round:
            asyncio.run(scorer.handle_round(todo))
        else:
            for b in todo:
                asyncio.run(scorer.handle(*b))
    monkeypatch.setattr(DeepModel, "predict_proba_many", real)
    return producer, scorer


def stored(scorer: BatchScorer) -> dict[int, dict[str, bytes]]:
    scorer.close()
    out = {}
    for p in range(PARTITIONS):
        store = PartitionStore(scorer.state_path(p))
        out[p] = {k: v for k, v in store.scan("") if not k.startswith("m:")}   # snapshots hold object ids
        store.close()
    return out


@pytest.mark.parametrize("odd_one_out", [False, True])
def test_a_round_scores_frozen_models_in_one_pass_with_the_bytes_of_one_pass_per_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, odd_one_out: bool) -> None:
    """Same published bytes and state per partition; one pass a round, or two where one partition's
    frozen weights differ (a checkpoint swapped into it alone)."""
    shared = random_weights(1)
    swap = {2: random_weights(2)} if odd_one_out else {}
    per_round: list[int] = []
    per_batch: list[int] = []
    a, sa = run(tmp_path / "a", True, swap, shared, per_round, monkeypatch)
    b, sb = run(tmp_path / "b", False, swap, shared, per_batch, monkeypatch)
    assert sum(len(v) for v in a.sent.values()) > 100
    assert a.sent == b.sent
    assert stored(sa) == stored(sb)
    scores = {orjson.loads(v)["scores"]["deep"] for sent in a.sent.values() for t, v in sent if "pred" in t}
    assert len(scores) > 50                                 # the torch model's scores are not a constant
    assert sum(per_round) == sum(per_batch) > 0             # every new event scored once either way
    assert len(per_batch) > 2 * 12                          # a pass per partition-batch with new events
    assert len(per_round) == 12 * (2 if odd_one_out else 1)


def test_scoring_keys_match_for_the_same_weights_and_change_with_them() -> None:
    one, two = random_weights(1), random_weights(2)
    copy = DeepModel.from_state(one.state())
    assert one.scoring_key() == copy.scoring_key() != two.scoring_key()
    key = copy.scoring_key()
    assert copy.scoring_key() is key                        # kept while nothing it covers changed
    copy.load_weights_from(two.state())                     # a hot swap: a new network
    assert copy.scoring_key() == two.scoring_key()


def test_a_round_opens_its_missing_partitions_first_and_leaves_one_revoked_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partitions are opened at assignment; one that is not yet is opened before anything of the round
    is staged. A rebalance may run during that wait: a partition revoked meanwhile is not processed
    (its next owner reads its records), the others are, as batch by batch."""
    s = Settings(state_dir=tmp_path, changelog=False, metrics_port=0, snapshot_key="k" * 32)
    producer = KeepingProducer()
    scorer = BatchScorer(s, load_spec(FULL), producer=producer)  # type: ignore[arg-type]
    asyncio.run(scorer.open_partitions([0, 1]))
    real_open = scorer.open_partitions

    async def open_while_revoking(partitions: Any) -> None:
        scorer.close([0])                   # the rebalance callback, run while the open waits
        await real_open(partitions)

    monkeypatch.setattr(scorer, "open_partitions", open_while_revoking)
    docs = [{"event_id": f"e{p}-{i}", "ts": i, "user": "u", "merchant": "m", "country": "c",
             "amount": 1.0 + i, "quantity": 1} for p in range(3) for i in range(3)]
    batches = [(s.topic("events"), p, [Record(i, b"u", orjson.dumps(d), 1_000)
                                       for i, d in enumerate(docs[3 * p:3 * p + 3])], None) for p in range(3)]
    asyncio.run(scorer.handle_round(batches))
    assert sorted(scorer.processors) == [1, 2]
    assert sorted(producer.sent) == [1, 2] and all(len(v) == 3 for v in producer.sent.values())
    scorer.close()
