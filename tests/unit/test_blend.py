"""models.blend: each policy, validation, stacking that learns whom to trust, pickling."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from models.blend import POLICIES, Blend, BlendSpec

MODELS = ("good", "noise")


def stream(n: int, seed: int) -> list[tuple[dict[str, float], int]]:
    """One informative model (its log-odds track the label) and one whose score is pure noise."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        y = int(rng.random() < 0.3)
        good = 1 / (1 + math.exp(-((2.5 if y else -2.5) + rng.gauss(0, 1.5))))
        noise = rng.uniform(0.01, 0.99)
        out.append(({"good": good, "noise": noise}, y))
    return out


def log_loss(pairs: list[tuple[float, int]]) -> float:
    eps = 1e-15
    return -sum(math.log(max(p, eps)) if y else math.log(max(1 - p, eps)) for p, y in pairs) / len(pairs)


# -- policies ------------------------------------------------------------------


def test_weighted_uses_weights_and_defaults_missing_to_1():
    b = Blend(BlendSpec(weights={"a": 3.0}), models=["a", "b"])
    assert b.score({"a": 0.75, "b": 0.25}) == pytest.approx((3 * 0.75 + 0.25) / 4)
    b = Blend(BlendSpec(), models=["a", "b", "c"])
    assert b.score({"a": 0.9, "b": 0.3, "c": 0.0}) == pytest.approx(0.4)
    b = Blend(BlendSpec(weights={"a": 0, "b": 2}), models=["a", "b"])
    assert b.score({"a": 0.9, "b": 0.2}) == pytest.approx(0.2)


def test_weighted_ignores_scores_of_other_models_and_needs_its_own():
    b = Blend(BlendSpec(), models=["a", "b"])
    assert b.score({"a": 0.2, "b": 0.4, "shadow": 1.0}) == pytest.approx(0.3)
    with pytest.raises(KeyError):
        b.score({"a": 0.2})


def test_max():
    b = Blend(BlendSpec(policy="max"), models=["a", "b", "c"])
    assert b.score({"a": 0.2, "b": 0.7, "c": 0.1, "shadow": 0.99}) == 0.7


def test_non_stacked_policies_do_not_learn():
    for policy in ("weighted", "max"):
        b = Blend(BlendSpec(policy=policy), models=MODELS)
        before = b.score({"good": 0.9, "noise": 0.1})
        for x, y in stream(50, seed=1):
            b.learn_one(x, y)
        assert b.score({"good": 0.9, "noise": 0.1}) == before
        assert b.version == "blend@0"


def test_stacked_without_data_says_half():
    b = Blend(BlendSpec(policy="stacked"), models=MODELS)
    assert b.score({"good": 0.99, "noise": 0.01}) == 0.5
    assert b.version == "blend@0"


def test_stacked_learns_to_prefer_the_informative_model():
    train, test = stream(3000, seed=7), stream(1000, seed=8)
    stacked = Blend(BlendSpec(policy="stacked", lr=0.05), models=MODELS)
    weighted = Blend(BlendSpec(), models=MODELS)
    for x, y in train:                      # test-then-train, as in the worker
        stacked.score(x)
        stacked.learn_one(x, y)
    assert stacked.version == "blend@3000"
    w = stacked.estimator.weights
    assert w["good"] > 0.5 and abs(w["noise"]) < 0.2 * w["good"]
    ll_stacked = log_loss([(stacked.score(x), y) for x, y in test])
    ll_weighted = log_loss([(weighted.score(x), y) for x, y in test])
    ll_good = log_loss([(x["good"], y) for x, y in test])
    assert ll_stacked < 0.5 * ll_weighted
    assert ll_stacked < ll_good * 1.05      # about as good as trusting the good model alone


def test_stacked_nan_score_does_not_poison_the_model():
    b = Blend(BlendSpec(policy="stacked"), models=MODELS)
    for x, y in stream(200, seed=3):
        b.learn_one(x, y)
    b.learn_one({"good": math.nan, "noise": 0.5}, 1)
    b.learn_one({"good": 0.0, "noise": 1.0}, 0)        # clipped, not log(0)
    assert all(math.isfinite(v) for v in b.estimator.weights.values())
    assert 0.0 < b.score({"good": 0.9, "noise": 0.5}) < 1.0


# -- pickle ------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_pickle_round_trip(policy):
    spec = BlendSpec(policy=policy, weights={"good": 2.0}) if policy == "weighted" else BlendSpec(policy=policy)
    b = Blend(spec, models=MODELS)
    data = stream(300, seed=5)
    for x, y in data[:200]:
        b.learn_one(x, y)
    c = pickle.loads(pickle.dumps(b))
    assert c.version == b.version and c.spec == b.spec
    probe = {"good": 0.8, "noise": 0.3}
    assert c.score(probe) == b.score(probe)
    for x, y in data[200:]:                  # the copy goes on exactly as the original
        b.learn_one(x, y)
        c.learn_one(x, y)
    assert c.score(probe) == b.score(probe)
    assert c.version == b.version


# -- validation ----------------------------------------------------------------------


def test_unknown_model_names_in_weights_raise():
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['hat'\]"):
        Blend(BlendSpec(weights={"lr": 1.0, "hat": 2.0}), models=["lr"])


@pytest.mark.parametrize(("models", "match"), [((), "at least one"), (("a", "a"), "unique")])
def test_bad_model_lists(models, match):
    with pytest.raises(ValueError, match=match):
        Blend(BlendSpec(), models=models)


def test_all_zero_weights_raise():
    with pytest.raises(ValueError, match="all 0"):
        Blend(BlendSpec(weights={"a": 0.0, "b": 0}), models=["a", "b"])


def test_parse():
    assert BlendSpec.parse({}) == BlendSpec()
    spec = BlendSpec.parse({"policy": "weighted", "weights": {"lr": 2, "hat": 0.5}})
    assert dict(spec.weights) == {"lr": 2.0, "hat": 0.5}
    assert BlendSpec.parse({"policy": "stacked", "lr": 0.1}).lr == 0.1


@pytest.mark.parametrize(("doc", "match"), [
    ({"policy": "median"}, "unknown policy 'median'"),
    ({"policy": "weighted", "alpha": 1}, r"unknown key\(s\) \['alpha'\]"),
    ({"policy": "max", "lr": 0.1}, "lr only applies to policy 'stacked'"),
    ({"policy": "stacked", "weights": {"a": 1}}, "weights only apply to policy 'weighted'"),
    ({"weights": {"a": -1}}, ">= 0"),
    ({"weights": {"a": math.inf}}, "finite"),
    ({"policy": "stacked", "lr": 0}, "lr must be > 0"),
])
def test_parse_errors(doc, match):
    with pytest.raises(ValueError, match=match):
        BlendSpec.parse(doc)


@pytest.mark.parametrize("doc", [{"weights": {"a": "1"}}, {"weights": {"a": True}}, {"weights": [1, 2]},
                                 {"policy": "stacked", "lr": "fast"}])
def test_parse_type_errors(doc):
    with pytest.raises(TypeError):
        BlendSpec.parse(doc)


def test_spec_weights_are_read_only():
    spec = BlendSpec(weights={"a": 1.0})
    with pytest.raises(TypeError):
        spec.weights["a"] = 2.0  # type: ignore[index]
