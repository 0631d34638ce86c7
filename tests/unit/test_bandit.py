"""Bandit pipelines: the worker's replay evaluation equals River's evaluate_offline.

Real X-Wines ratings (the bundled 1,000), real River policies, no broker:
each event is decided, then its rating (the label) arrives as the next record,
so the processor sees what ``river.bandit.evaluate_offline`` sees.
"""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path

import orjson
import pytest
from river import bandit, proba

from models.bandit import BanditPrequential, merge_bandit
from streams.datasets import iter_records
from streams.processor import PartitionProcessor, Record
from streams.spec import SpecError, load_spec, parse_spec
from streams.state import PartitionStore

SPEC = load_spec("xwines_bandit")
RIVER = {
    "thompson": lambda: bandit.ThompsonSampling(reward_obj=proba.Beta(), seed=42),
    "ucb": lambda: bandit.UCB(delta=1.0, seed=42),
    "eps": lambda: bandit.EpsilonGreedy(epsilon=0.1, seed=42),
    "random": lambda: bandit.RandomPolicy(seed=42),
}


def test_each_policy_equals_river_evaluate_offline(tmp_path: Path) -> None:
    rows = list(iter_records("xwines"))
    p = PartitionProcessor(SPEC, PartitionStore(tmp_path / "s"), 0, clock=lambda: 0.0)
    decisions = []
    for topic, group in itertools.groupby(enumerate(rows), key=lambda t: t[1]["topic"]):
        recs = [Record(i, r["key"].encode(), orjson.dumps(r["value"]), 0) for i, r in group]
        decisions += [orjson.loads(o.value) for o in p.process(topic, recs) if o.topic == "predictions"]
    assert len(decisions) == 1000 and all(d["action"] in SPEC.bandit_arms for d in decisions)
    assert all(d["model"] == "thompson" and d["action"] == d["actions"]["thompson"] for d in decisions)
    events = {r["value"]["event_id"]: r["value"] for r in rows if r["topic"] == "events"}
    history = [(list(SPEC.bandit_arms), None, events[r["value"]["event_id"]]["type"],
                1.0 if r["value"]["label"] >= 4.0 else 0.0) for r in rows if r["topic"] == "labels"]
    for name, make in RIVER.items():
        total, n_used = bandit.evaluate_offline(policy=make(), history=history)
        ours = p.prequential[name].get()
        assert (ours["matched"], ours["reward"]) == (n_used, total.get()), name
        assert p.models[[m.name for m in p.models].index(name)].version == f"{name}@{n_used}"


def test_policies_survive_a_snapshot_round_trip(tmp_path: Path) -> None:
    rows = list(itertools.islice(iter_records("xwines"), 600))
    key = b"0123456789abcdef-bandit"
    recs = [(r["topic"], Record(i, r["key"].encode(), orjson.dumps(r["value"]), 0)) for i, r in enumerate(rows)]
    a = PartitionProcessor(SPEC, PartitionStore(tmp_path / "a"), 0, snapshot_key=key)
    for topic, rec in recs[:300]:
        a.process(topic, [rec])
    a.flush()
    a.close()
    b = PartitionProcessor(SPEC, PartitionStore(tmp_path / "a"), 0, snapshot_key=key)
    c = PartitionProcessor(SPEC, PartitionStore(tmp_path / "c"), 0)
    for topic, rec in recs[:300]:
        c.process(topic, [rec])
    out_b = [o.value for topic, rec in recs[300:] for o in b.process(topic, [rec])]
    out_c = [o.value for topic, rec in recs[300:] for o in c.process(topic, [rec])]
    assert out_b == out_c        # same decisions: policies and their random state were restored


def test_bandit_metrics_merge_over_partitions() -> None:
    a, b = BanditPrequential(), BanditPrequential()
    a.update(1.0, "x", "x")
    b.update(0.0, "y", "x")
    b.update(1.0, "y", "y")
    m = merge_bandit([a.state(), b.state()])
    assert (m["n"], m["matched"], m["reward"]) == (3, 2, 2.0)


def test_bandit_spec_checks() -> None:
    base = tomllib.loads((Path(__file__).parents[2] / "pipelines" / "xwines_bandit.toml").read_text())
    bad = {**base, "bandit": {**base["bandit"], "arm": "nope"}}
    with pytest.raises(SpecError, match="arm must name"):
        parse_spec(bad, "<t>")
    with pytest.raises(SpecError, match="arms"):
        parse_spec({**base, "bandit": {**base["bandit"], "arms": []}}, "<t>")
    with pytest.raises(SpecError, match="bandit model|classification model"):
        parse_spec({**base, "models": [{"name": "lr", "kind": "logistic_regression"}]}, "<t>")
    # A timed-out event has no reward to learn: a bandit learns only from rewards that arrive. The
    # processor has no learn_one path for a policy, so the spec must refuse the combination up front.
    with pytest.raises(SpecError, match="default is not supported for bandits"):
        parse_spec({**base, "labels": {"timeout_ms": 60_000, "default": 0}}, "<t>")
    assert parse_spec({**base, "labels": {}}, "<t>").label_default is None
