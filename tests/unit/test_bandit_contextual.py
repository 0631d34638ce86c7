"""Contextual bandits (LinUCB): they learn when the best arm depends on the context.

Real River, real RocksDB, no broker: every stream goes through the
PartitionProcessor, each event decided and its reward arriving as the next
record, so the replay method sees what ``river.bandit.evaluate_offline`` sees.
"""

from __future__ import annotations

import itertools
import random
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
from river import bandit

from models import persistence
from models.bandit import BanditModel, LinUCB
from models.base import ModelSpec
from models.registry import build_model
from streams.datasets import iter_records
from streams.processor import PartitionProcessor, Record
from streams.spec import SpecError, load_spec, parse_spec
from streams.state import PartitionStore

SPEC = load_spec("xwines_linucb")
CONTEXT = ("abv_count_365d_by_user_id",)

SYNTHETIC = """
[pipeline]
name = "synthetic_linucb"
task = "bandit"
[fields]
event_id = "event_id"
timestamp = "ts"
label = "label"
[features]
numeric = ["u"]
categorical = ["arm"]
[bandit]
arm = "arm"
arms = ["a", "b", "c"]
[[models]]
name = "linucb"
kind = "linucb"
params = { alpha = 0.5 }
[[models]]
name = "thompson"
kind = "thompson"
shadow = true
[[models]]
name = "ucb"
kind = "ucb"
shadow = true
[[models]]
name = "eps"
kind = "epsilon_greedy"
shadow = true
[[models]]
name = "random"
kind = "random_policy"
shadow = true
"""


def synthetic(n: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """Uniformly logged arms; P(reward) of a is 0.5 + 0.4u, of b 0.5 - 0.4u, of c 0.45.

    Every arm is worth about 0.5 or less on average (context-free), but the
    best arm for a given ``u`` is worth 0.5 + 0.4|u| (0.7 on average).
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        u = rng.uniform(-1.0, 1.0)
        arm = rng.choice("abc")
        p = {"a": 0.5 + 0.4 * u, "b": 0.5 - 0.4 * u, "c": 0.45}[arm]
        out.append(("events", {"event_id": f"e{i}", "ts": i, "u": u, "arm": arm}))
        out.append(("labels", {"event_id": f"e{i}", "ts": i, "label": float(rng.random() < p)}))
    return out


def replay(spec: Any, rows: list[tuple[str, dict[str, Any]]], path: Path,
           key: bytes | None = None) -> tuple[PartitionProcessor, list[bytes]]:
    """Process ``rows`` in order, a batch per run of same-topic records; the processor and its output bytes."""
    p = PartitionProcessor(spec, PartitionStore(path), 0, clock=lambda: 0.0, snapshot_key=key)
    out: list[bytes] = []
    for topic, group in itertools.groupby(enumerate(rows), key=lambda t: t[1][0]):
        recs = [Record(i, b"k", orjson.dumps(v), 0) for i, (_, v) in group]
        out += [o.value for o in p.process(topic, recs)]
    return p, out


def xwines_rows(n: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    return [(r["topic"], r["value"]) for r in itertools.islice(iter_records("xwines"), n)]


def test_linucb_beats_the_best_context_free_policy_when_the_best_arm_depends_on_context(tmp_path: Path) -> None:
    spec = parse_spec(tomllib.loads(SYNTHETIC), "<synthetic>")
    p, _ = replay(spec, synthetic(3000, seed=7), tmp_path / "s")
    got = {name: q.get() for name, q in p.prequential.items()}
    assert all(g["matched"] > 500 for g in got.values()), got     # uniform logging: about 1/3 match
    best_free = max(g["mean_reward"] for name, g in got.items() if name != "linucb")
    assert best_free < 0.56, got
    assert got["linucb"]["mean_reward"] > best_free + 0.1, got       # about 0.70 against 0.52


def test_xwines_linucb_runs_end_to_end_and_equals_river_evaluate_offline(tmp_path: Path) -> None:
    rows = xwines_rows(600)
    p, out = replay(SPEC, rows, tmp_path / "s")
    decisions = [orjson.loads(v) for v in out if b'"action"' in v]
    assert len(decisions) == 300 and all(d["model"] == "linucb" for d in decisions)
    assert all(d["action"] == d["actions"]["linucb"] in SPEC.bandit_arms for d in decisions)
    assert set(decisions[0]["actions"]) == {"linucb", "thompson", "ucb", "eps", "random"}
    # River's own replay loop, given the same standardised contexts, makes the same choices
    scaler = LinUCB(CONTEXT)
    contexts = {d["event_id"]: scaler.observe(d["features"]) for d in decisions}
    logged = {v["event_id"]: v["type"] for t, v in rows if t == "events"}
    history = [(list(SPEC.bandit_arms), contexts[v["event_id"]], logged[v["event_id"]],
                1.0 if v["label"] >= 4.0 else 0.0) for t, v in rows if t == "labels"]
    total, n_used = bandit.evaluate_offline(policy=LinUCB(CONTEXT, alpha=0.25, ridge=1.0, seed=42), history=history)
    ours = p.prequential["linucb"].get()
    assert (ours["matched"], ours["reward"]) == (n_used, total.get())
    assert n_used > 100 and p.models[0].version == f"linucb@{n_used}"


def test_replays_are_deterministic(tmp_path: Path) -> None:
    rows = xwines_rows(400)
    _, a = replay(SPEC, rows, tmp_path / "a")
    _, b = replay(SPEC, rows, tmp_path / "b")
    assert a == b and len(a) == 200       # same input, same bytes (decisions, actions, versions)
    syn = parse_spec(tomllib.loads(SYNTHETIC), "<synthetic>")
    assert replay(syn, synthetic(300, 1), tmp_path / "c")[1] == replay(syn, synthetic(300, 1), tmp_path / "d")[1]


def test_linucb_survives_a_snapshot_round_trip(tmp_path: Path) -> None:
    rows = xwines_rows(600)
    key = b"0123456789abcdef-linucb"
    a, _ = replay(SPEC, rows[:300], tmp_path / "a", key)
    a.flush()
    a.close()
    b = PartitionProcessor(SPEC, PartitionStore(tmp_path / "a"), 0, clock=lambda: 0.0, snapshot_key=key)
    assert "linucb" in b._restored and isinstance(b.models[0].policy, LinUCB) and b.models[0].n_learned > 0
    c, _ = replay(SPEC, rows[:300], tmp_path / "c")
    tail = [(t, Record(300 + i, b"k", orjson.dumps(v), 0)) for i, (t, v) in enumerate(rows[300:])]
    out_b = [o.value for t, rec in tail for o in b.process(t, [rec])]
    out_c = [o.value for t, rec in tail for o in c.process(t, [rec])]
    assert out_b == out_c    # same decisions: regressions, feature statistics and random state restored


def test_policy_snapshot_is_signed() -> None:
    pol = LinUCB(("u",), alpha=0.5, seed=3)
    for i in range(50):
        ctx = pol.observe({"u": i % 7})
        pol.update(pol.pull(["a", "b"], context=ctx), ctx, float(i % 2))
    blob = persistence.dumps({"policy": pol}, b"k" * 32)
    back = persistence.loads(blob, b"k" * 32)["policy"]
    probe = [{"u": float(u)} for u in range(-3, 10)]
    assert [back.pull(["a", "b"], context=back.observe(x)) for x in probe] == \
        [pol.pull(["a", "b"], context=pol.observe(x)) for x in probe]
    with pytest.raises(persistence.SnapshotError):
        persistence.loads(blob[:-1] + bytes([blob[-1] ^ 1]), b"k" * 32)


def test_bandit_model_passes_context_only_to_contextual_policies() -> None:
    arms = ("a", "b")
    ctx_model = build_model(ModelSpec("lu", "linucb", {"alpha": 0.0}), ("u",), ("arm",), bandit_arms=("arm", arms, None))
    free = build_model(ModelSpec("eg", "epsilon_greedy", {}), ("u",), ("arm",), bandit_arms=("arm", arms, None))
    assert isinstance(ctx_model, BanditModel) and ctx_model.contextual and not free.contextual
    assert ctx_model.policy.features == ("u",)
    x = {"u": 2.0, "arm": "a"}
    assert ctx_model.learn("b", x, 1.0) is False and ctx_model.n_learned == 0   # not the logged arm
    assert ctx_model.learn("a", x, 1.0) is True and ctx_model.version == "lu@1"
    assert free.choose(x) in arms and free.learn("a", x, 1.0) and free.version == "eg@1"
    assert "arm" not in ctx_model.policy.context(x)          # the logged action is never context


def test_context_standardises_and_tolerates_missing_features() -> None:
    pol = LinUCB(("u", "v"))
    for u in (1.0, 2.0, 3.0):
        pol.observe({"u": u, "v": None})
    ctx = pol.context({"u": 3.0})
    assert ctx[LinUCB.BIAS] == 1.0 and ctx["u"] == pytest.approx(1.224744871391589) and "v" not in ctx


def test_burn_in_pulls_each_arm_first() -> None:
    # River 0.26's LinUCBDisjoint passes burn_in as the reward scaler; LinUCB sets it right
    pol = LinUCB(("u",), burn_in=2, seed=0)
    pulled = []
    for _ in range(6):
        ctx = pol.observe({"u": 1.0})
        pulled.append(pol.pull(["a", "b", "c"], context=ctx))
        pol.update(pulled[-1], ctx, 1.0)
    assert pulled == ["a", "a", "b", "b", "c", "c"] and pol.reward_scaler is None


def test_linucb_spec_checks() -> None:
    doc = tomllib.loads((Path(__file__).parents[2] / "pipelines" / "xwines_linucb.toml").read_text())

    def with_params(**params: Any) -> dict[str, Any]:
        models = [dict(doc["models"][0], params=params)] + doc["models"][1:]
        return {**doc, "models": models}

    parse_spec(with_params(alpha=0.5, context=""), "<t>")            # "": every numeric input
    with pytest.raises(SpecError, match="not numeric inputs"):
        parse_spec(with_params(context="type"), "<t>")               # the logged action: refused
    with pytest.raises(SpecError, match="alpha >= 0"):
        parse_spec(with_params(alpha=-1.0), "<t>")
    with pytest.raises(SpecError, match="unknown parameter"):
        parse_spec(with_params(delta=1.0), "<t>")
    with pytest.raises(SpecError, match="bandit model"):
        clf = {**doc, "pipeline": {**doc["pipeline"], "task": "classification"}}
        clf.pop("bandit")
        parse_spec(clf, "<t>")
