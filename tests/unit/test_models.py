"""Contract suite for every model in models.registry.REGISTRY, and Prequential metrics."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import fields
from types import MappingProxyType
from typing import Any

import pytest
from river import metrics

from models import REGISTRY, ModelSpec, OnlineModel, Prequential, build_model
from models.base import Classifier
from models.registry import build_estimator

NUMERIC = ("quantity", "unit_price", "hour")
CATEGORICAL = ("country",)
KINDS = sorted(k for k, e in REGISTRY.items() if e.task == "classification")   # regressors: test_regression.py


def make_data(n: int, seed: int) -> list[tuple[dict[str, float | str], int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q = rng.uniform(-3, 3)
        price = rng.uniform(0, 10)
        hour = float(rng.randrange(24))
        country = rng.choice(["UK", "FR", "DE"])
        logit = 1.5 * q - 0.3 * price + (1.0 if country == "UK" else -0.5)
        y = int(rng.random() < 1 / (1 + math.exp(-logit)))
        out.append(({"quantity": q, "unit_price": price, "hour": hour, "country": country}, y))
    return out


TRAIN = make_data(200, seed=1)
PROBE = make_data(40, seed=2)


def build(kind: str, **params: Any) -> OnlineModel:
    return build_model(ModelSpec(name=kind, kind=kind, params=params), NUMERIC, CATEGORICAL)


def train(m: OnlineModel, data: list[tuple[dict[str, Any], int]] = TRAIN) -> None:
    for x, y in data:
        m.predict_proba_one(x)
        m.learn_one(x, y)


@pytest.fixture(scope="module")
def trained() -> dict[str, OnlineModel]:
    out = {}
    for kind in KINDS:
        m = build(kind)
        train(m)
        out[kind] = m
    return out


def test_registry_is_not_empty() -> None:
    assert {"logistic_regression", "hoeffding_adaptive_tree", "arf"} <= set(REGISTRY)


@pytest.mark.parametrize("kind", KINDS)
def test_is_a_classifier(kind: str) -> None:
    m = build(kind)
    assert isinstance(m, Classifier)
    assert REGISTRY[kind].task == "classification"


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_under_seed(kind: str, trained: dict[str, OnlineModel]) -> None:
    again = build(kind)
    train(again)
    a = [trained[kind].predict_proba_one(x) for x, _ in PROBE]
    b = [again.predict_proba_one(x) for x, _ in PROBE]
    assert a == b, "two builds of the same spec must predict identically after the same examples"
    assert trained[kind].version == again.version == f"{kind}@200"


@pytest.mark.parametrize("kind", KINDS)
def test_model_learns_something(kind: str, trained: dict[str, OnlineModel]) -> None:
    fresh = build(kind)
    before = [fresh.predict_proba_one(x) for x, _ in PROBE]
    after = [trained[kind].predict_proba_one(x) for x, _ in PROBE]
    assert before != after
    # better than chance on the probe set (the signal is strong)
    hits = sum((p > 0.5) == bool(y) for p, (_, y) in zip(after, PROBE, strict=True))
    assert hits / len(PROBE) > 0.6


@pytest.mark.parametrize("kind", KINDS)
def test_predict_does_not_mutate_input_nor_learn(kind: str, trained: dict[str, OnlineModel]) -> None:
    m = trained[kind]
    version = m.version
    for x, _ in PROBE[:10]:
        before = copy.deepcopy(x)
        p1 = m.predict_proba_one(x)
        assert x == before and list(x) == list(before)
        assert m.predict_proba_one(MappingProxyType(x)) == p1  # read-only mapping works too
        assert m.predict_proba_one(x) == p1
    assert m.version == version


@pytest.mark.parametrize("kind", KINDS)
def test_learn_does_not_mutate_input(kind: str) -> None:
    m = build(kind)
    x, y = TRAIN[0]
    before = copy.deepcopy(x)
    m.learn_one(x, y)
    assert x == before


@pytest.mark.parametrize("kind", KINDS)
def test_predictions_are_probabilities(kind: str, trained: dict[str, OnlineModel]) -> None:
    fresh = build(kind)
    for m in (fresh, trained[kind]):
        for x, _ in PROBE:
            p = m.predict_proba_one(x)
            assert type(p) is float
            assert 0.0 <= p <= 1.0 and math.isfinite(p)
    extreme = {"quantity": 1e6, "unit_price": -1e6, "hour": 0.0, "country": "never-seen"}
    assert 0.0 <= trained[kind].predict_proba_one(extreme) <= 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_learning_bumps_version(kind: str) -> None:
    m = build(kind)
    assert (m.n_learned, m.version) == (0, f"{kind}@0")
    x, y = TRAIN[0]
    m.learn_one(x, y)
    assert (m.n_learned, m.version) == (1, f"{kind}@1")
    m.learn_one(x, True)
    m.learn_one(x, 0.0)
    assert m.n_learned == 3 and m.version == f"{kind}@3"


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_params_raise(kind: str) -> None:
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['bogus'\]"):
        build(kind, bogus=1)


@pytest.mark.parametrize("kind", KINDS)
def test_wrongly_typed_params_raise(kind: str) -> None:
    first = fields(REGISTRY[kind].params)[0]
    with pytest.raises(TypeError, match=first.name):
        build(kind, **{first.name: "1"})
    with pytest.raises(TypeError, match=first.name):
        build(kind, **{first.name: True})


@pytest.mark.parametrize("kind", KINDS)
def test_explicit_defaults_equal_implicit(kind: str) -> None:
    defaults = {f.name: f.default for f in fields(REGISTRY[kind].params)}
    a, b = build(kind), build(kind, **defaults)
    train(a, TRAIN[:60])
    train(b, TRAIN[:60])
    assert [a.predict_proba_one(x) for x, _ in PROBE] == [b.predict_proba_one(x) for x, _ in PROBE]


@pytest.mark.parametrize("kind", KINDS)
def test_builds_are_independent(kind: str) -> None:
    a, b = build(kind), build(kind)
    assert a.estimator is not b.estimator
    train(a, TRAIN[:60])
    assert b.n_learned == 0
    assert [b.predict_proba_one(x) for x, _ in PROBE] == [build(kind).predict_proba_one(x) for x, _ in PROBE]


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"unknown model kind 'svm'.*logistic_regression"):
        build_estimator(ModelSpec(name="m", kind="svm"))


def test_seed_param_changes_forest() -> None:
    a, b = build("arf", seed=1), build("arf", seed=2)
    train(a)
    train(b)
    assert [a.predict_proba_one(x) for x, _ in PROBE] != [b.predict_proba_one(x) for x, _ in PROBE]


def test_logistic_regression_uses_categorical_features() -> None:
    m = build("logistic_regression")
    train(m)
    x = dict(PROBE[0][0])
    uk = m.predict_proba_one({**x, "country": "UK"})
    de = m.predict_proba_one({**x, "country": "DE"})
    assert uk > de   # the synthetic signal favours UK


def test_logistic_regression_lr_param_takes_effect() -> None:
    slow, fast = build("logistic_regression", lr=0.001), build("logistic_regression", lr=0.5)
    train(slow, TRAIN[:50])
    train(fast, TRAIN[:50])
    x = PROBE[0][0]
    assert slow.predict_proba_one(x) != fast.predict_proba_one(x)


# -- Prequential ---------------------------------------------------------------------------
def _stream(n: int, seed: int) -> list[tuple[int, float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        y = rng.random() < 0.4
        p = min(1.0, max(0.0, rng.gauss(0.65 if y else 0.35, 0.2)))
        out.append((int(y), p))
    out += [(1, 0.5), (0, 0.5), (1, 0.0), (0, 1.0)]  # ties and extremes
    return out


@pytest.mark.parametrize(("threshold", "seed"), [(0.5, 11), (0.3, 12)])
def test_prequential_matches_river_metrics(threshold: float, seed: int) -> None:
    data = _stream(500, seed=seed)
    p = Prequential(threshold)
    acc, ll = metrics.Accuracy(), metrics.LogLoss()
    for y, s in data:
        p.update(y, s)
        yb = bool(y)
        acc.update(yb, s > threshold)
        ll.update(yb, {True: s, False: 1.0 - s})
    got = p.get()
    assert got["n"] == len(data)
    assert got["accuracy"] == pytest.approx(acc.get(), abs=1e-12)
    assert got["log_loss"] == pytest.approx(ll.get(), abs=1e-12)
    assert got["roc_auc"] == pytest.approx(_mann_whitney(data), abs=2e-3)   # binned: ties within a bin
    # and against hand-computed figures (independent of river)
    hand_acc = sum((s > threshold) == bool(y) for y, s in data) / len(data)
    assert got["accuracy"] == pytest.approx(hand_acc, abs=1e-12)
    eps = 1e-15
    clamped = [(y, min(max(s, eps), 1 - eps)) for y, s in data]   # river clamps P(True)
    hand_ll = -sum(math.log(c if y else 1 - c) for y, c in clamped) / len(data)
    assert got["log_loss"] == pytest.approx(hand_ll, rel=1e-9)
    assert 0.5 < got["roc_auc"] <= 1.0


def _mann_whitney(data: list[tuple[int, float]]) -> float:
    """Exact ROC AUC: P(score of a positive > score of a negative), ties half."""
    pos = [s for y, s in data if y]
    neg = [s for y, s in data if not y]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_binned_auc_is_exact_when_scores_fall_in_distinct_bins() -> None:
    from models.evaluate import BinnedROCAUC

    rng = random.Random(3)
    data = [(int(rng.random() < 0.5), (i + 0.5) / 4096) for i in rng.sample(range(4096), 800)]
    auc = BinnedROCAUC()
    for y, s in data:
        auc.update(y, s)
    assert auc.get() == pytest.approx(_mann_whitney(data), abs=1e-12)


def test_prequential_tie_rule() -> None:
    p = Prequential(0.5)
    p.update(0, 0.5)
    assert p.get()["accuracy"] == 1.0   # a tie is class 0 (as the published prediction's "class")
    q = Prequential(0.5)
    q.update(True, 0.5)
    assert q.get()["accuracy"] == 0.0


def test_prequential_empty() -> None:
    got = Prequential().get()
    assert got["n"] == 0 and all(isinstance(v, (int, float)) for v in got.values())


def test_prequential_on_model_matches_river_directly() -> None:
    m = build("logistic_regression")
    pre = Prequential()
    ll = metrics.LogLoss()
    seen = []
    for x, y in TRAIN:
        s = m.predict_proba_one(x)
        pre.update(y, s)
        seen.append((int(y), s))
        proba = m.estimator.predict_proba_one(dict(x))
        ll.update(bool(y), proba)
        m.learn_one(x, y)
    assert pre.get()["roc_auc"] == pytest.approx(_mann_whitney(seen), abs=2e-3)
    assert pre.get()["log_loss"] == pytest.approx(ll.get(), abs=1e-12)


def test_adwin_counts_a_change_in_error_rate_and_not_a_stable_one() -> None:
    rng = random.Random(5)
    stable, shifted = Prequential(), Prequential()
    for i in range(4000):
        y = rng.random() < 0.5
        stable.update(y, 0.9 if (y if rng.random() < 0.9 else not y) else 0.1)   # 90 % right throughout
        right = rng.random() < (0.95 if i < 2000 else 0.3)                        # 95 % right, then 30 %
        shifted.update(y, 0.9 if (y if right else not y) else 0.1)
    assert shifted.state()["drifts"] >= 1
    assert stable.state()["drifts"] == 0


# -- Prequential: River's figures, without River's per-call cost ---------------------------
def test_prequential_equals_river_metrics_bit_for_bit():
    import random

    from river import drift, metrics, utils

    from models.evaluate import Prequential

    rnd = random.Random(11)
    p = Prequential(window=50)
    acc, roll, ll, adwin = metrics.Accuracy(), utils.Rolling(metrics.Accuracy, window_size=50), metrics.LogLoss(), \
        drift.ADWIN()
    drifts = 0
    for i in range(5000):
        y = rnd.random() < (0.2 if i < 2500 else 0.7)          # a drift half-way
        s = rnd.choice([0.0, 1.0, 0.5, 1e-20, 1 - 1e-17, rnd.random()])
        p.update(y, s)
        acc.update(y, s > 0.5)
        roll.update(y, s > 0.5)
        ll.update(y, {True: s, False: 1.0 - s})
        adwin.update(float((s > 0.5) != y))
        drifts += adwin.drift_detected
        st = p.state()
        assert (st["accuracy"], st["rolling_accuracy"], st["log_loss"]) == (acc.get(), roll.get(), ll.get())
    assert p.drifts == drifts > 0


def test_prequential_batches_equal_one_label_at_a_time_and_the_plain_formulas():
    """update_many inlines the ROC AUC histogram and the baseline; they must stay the plain ones."""
    import math
    import random

    from models.evaluate import BinnedROCAUC, Prequential

    rnd = random.Random(12)
    ys = [rnd.random() < 0.3 for _ in range(3000)]
    ps = [rnd.choice([0.0, 1.0, 0.5, 1e-20, 1 - 1e-17, 0.99999, rnd.random()]) for _ in ys]
    batched, single, auc = Prequential(window=40), Prequential(window=40), BinnedROCAUC()
    for i in range(0, len(ys), 97):
        batched.update_many(ys[i:i + 97], ps[i:i + 97])
    baseline, positives = 0.0, 0
    for n, (y, p) in enumerate(zip(ys, ps)):
        single.update(y, p)
        auc.update(y, p)
        base = (positives + 0.5) / (n + 1.0)
        baseline += -math.log(base if y else 1.0 - base)
        positives += y
    assert batched.state() == single.state()
    assert (batched.roc_auc.pos, batched.roc_auc.neg) == (auc.pos, auc.neg)
    assert batched.baseline_loss == baseline and batched.positives == positives == sum(ys)


def test_prequential_drift_counts_equal_rivers_adwin_through_its_public_api():
    """update_many drives ADWIN's helper directly; the detections must be River's own, in any batching."""
    import random

    from river import drift

    from models.evaluate import Prequential

    rnd = random.Random(5)
    ys, ps = [], []
    for phase in range(6):                  # the error rate jumps between 5 % and 60 % every 1,500 labels
        err = 0.05 if phase % 2 == 0 else 0.6
        for _ in range(1500):
            y = rnd.random() < 0.5
            right = rnd.random() >= err
            ys.append(y)
            ps.append(0.9 if y == right else 0.1)
    reference, detections = drift.ADWIN(), 0
    for y, p in zip(ys, ps):
        reference.update(0.0 if (p > 0.5) == y else 1.0)
        detections += reference.drift_detected
    assert detections >= 3
    for size in (1, 7, 500, len(ys)):
        q = Prequential()
        for i in range(0, len(ys), size):
            q.update_many(ys[i:i + size], ps[i:i + size])
        assert q.drifts == detections, size
        assert q.drift.drift_detected == reference.drift_detected and q.drift.width == reference.width


def test_prequential_snapshots_from_the_river_metrics_version_load():
    import pickle

    from river import drift, metrics, utils

    from models.evaluate import BinnedROCAUC, Prequential

    old = {"threshold": 0.5, "accuracy": metrics.Accuracy(), "drift": drift.ADWIN(), "drifts": 0,
           "rolling_accuracy": utils.Rolling(metrics.Accuracy, window_size=3), "log_loss": metrics.LogLoss(),
           "roc_auc": BinnedROCAUC(), "n": 0, "positives": 0, "baseline_loss": 0.0}
    new = Prequential(window=3)
    for y, s in [(1, 0.9), (0, 0.7), (1, 0.2), (1, 0.8), (0, 0.1)]:
        new.update(y, s)
        old["accuracy"].update(bool(y), s > 0.5)
        old["rolling_accuracy"].update(bool(y), s > 0.5)
        old["log_loss"].update(bool(y), {True: s, False: 1 - s})
    restored = Prequential.__new__(Prequential)
    restored.__setstate__(pickle.loads(pickle.dumps(old)))
    assert restored.correct == new.correct and list(restored.recent) == list(new.recent)
    assert (restored.loss_n, restored.loss_mean) == (new.loss_n, new.loss_mean)
    restored.update(1, 0.6)
    new.update(1, 0.6)
    assert restored.state()["rolling_accuracy"] == new.state()["rolling_accuracy"]
