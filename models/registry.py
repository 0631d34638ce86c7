"""Named River estimators with typed parameters, selectable from a pipeline spec.

Why a registry: a pipeline file names a model and its parameters; nothing in a
spec is ever evaluated as code. Each entry checks its parameters' names and
types and builds a fresh estimator.

Batch models (torch) are listed in :data:`BATCH_KINDS`: they score a whole
micro-batch in one call and are built from :mod:`models.deep`, imported only
when a pipeline uses one (torch takes seconds to import).

>>> sorted(REGISTRY)
['amf_regressor', 'arf', 'biased_mf', 'epsilon_greedy', 'funk_mf', 'hoeffding_adaptive_tree', 'linear_regression', 'linucb', 'logistic_regression', 'random_policy', 'thompson', 'ucb']
>>> BATCH_KINDS
('wide_deep',)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from river import bandit, base, forest, linear_model, optim, preprocessing, proba, reco, tree

from models.base import ModelSpec


@dataclass(frozen=True)
class LogisticRegressionParams:
    lr: float = 0.01          # SGD learning rate
    l2: float = 0.0           # L2 regularisation
    intercept_lr: float = 0.01


@dataclass(frozen=True)
class HoeffdingAdaptiveTreeParams:
    grace_period: int = 200
    delta: float = 1e-7
    seed: int = 42


@dataclass(frozen=True)
class ARFParams:
    n_models: int = 10
    seed: int = 42


@dataclass(frozen=True)
class LinearRegressionParams:
    lr: float = 0.01          # SGD learning rate
    l2: float = 0.0
    intercept_lr: float = 0.01


@dataclass(frozen=True)
class AMFRegressorParams:
    n_estimators: int = 10
    step: float = 1.0
    seed: int = 42


@dataclass(frozen=True)
class MFParams:
    n_factors: int = 10       # latent dimensions
    lr: float = 0.05          # SGD learning rate of the latent factors (and biases)
    l2: float = 0.01          # regularisation of the factors
    seed: int = 42


def _typed(cls: type, params: Mapping[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(params) - set(known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} for {cls.__name__}; known: {sorted(known)}")
    out = {}
    for k, v in params.items():
        want = type(getattr(cls(), k))
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, want) or isinstance(v, bool) != (want is bool):
            raise TypeError(f"parameter {k!r} of {cls.__name__} must be {want.__name__}, got {v!r}")
        out[k] = v
    return cls(**out)


class Pick(base.Transformer):
    """``compose.Select`` that tolerates absent keys: an optional feature may be missing.

    River's ``Select`` raises ``KeyError`` on an absent key; a missing optional
    feature is simply not in the output (the scaler and the linear model then
    treat it as 0 after standardisation, as River does for sparse inputs).

    >>> Pick("a", "b").transform_one({"a": 1.0, "c": 2.0})
    {'a': 1.0}
    """

    def __init__(self, *keys: str) -> None:
        self.keys = keys

    def transform_one(self, x: dict) -> dict:
        return {k: x[k] for k in self.keys if k in x}


class _ExactDot:
    """An order-independent dot product for River's linear models.

    Why: River 0.26 keeps the weights in a Rust ``VectorDict`` whose ``dot``
    sums in hash-map order, and that order is not the same for a model
    restored from its snapshot: after a crash, an event scored again could
    differ in the last bit from its first answer (found by the kill suite).
    ``math.fsum`` is correctly rounded, so the sum no longer depends on any
    order; weights unseen so far count as 0, as River's zero initialiser.
    """

    def _raw_dot_one(self, x: dict) -> float:
        get = self._weights.get  # type: ignore[attr-defined]
        return math.fsum(get(i, 0.0) * xi for i, xi in x.items()) + self.intercept  # type: ignore[attr-defined]


class LogisticRegression(_ExactDot, linear_model.LogisticRegression):
    """River's logistic regression with :class:`_ExactDot`."""


class LinearRegression(_ExactDot, linear_model.LinearRegression):
    """River's linear regression with :class:`_ExactDot`."""


def _preprocess(numeric: Sequence[str], categorical: Sequence[str]) -> base.Transformer:
    """Standardise numeric features; one-hot categorical ones (scaling them would zero them)."""
    scaled = preprocessing.StandardScaler()
    if not categorical:
        return scaled
    return (Pick(*numeric) | scaled) + (Pick(*categorical) | preprocessing.OneHotEncoder())


def _logistic_regression(p: LogisticRegressionParams, numeric: Sequence[str], categorical: Sequence[str]) -> base.Estimator:
    if not categorical:   # the native kernel: River's StandardScaler | LogisticRegression, same bits, ~10x faster
        from models.linear import ScaledLogisticRegression

        return ScaledLogisticRegression(lr=p.lr, l2=p.l2, intercept_lr=p.intercept_lr)  # type: ignore[return-value]
    return _preprocess(numeric, categorical) | LogisticRegression(
        optimizer=optim.SGD(p.lr), l2=p.l2, intercept_lr=p.intercept_lr)


def _hat(p: HoeffdingAdaptiveTreeParams, numeric: Sequence[str], categorical: Sequence[str]) -> base.Estimator:
    return tree.HoeffdingAdaptiveTreeClassifier(grace_period=p.grace_period, delta=p.delta, seed=p.seed)


def _arf(p: ARFParams, numeric: Sequence[str], categorical: Sequence[str]) -> base.Estimator:
    return forest.ARFClassifier(n_models=p.n_models, seed=p.seed)


def _linear_regression(p: LinearRegressionParams, numeric: Sequence[str], categorical: Sequence[str]) -> base.Estimator:
    # the target is standardised too: SGD on raw targets in the hundreds (PM2.5) diverges
    return _preprocess(numeric, categorical) | preprocessing.TargetStandardScaler(
        regressor=LinearRegression(optimizer=optim.SGD(p.lr), l2=p.l2, intercept_lr=p.intercept_lr))


def _amf(p: AMFRegressorParams, numeric: Sequence[str], categorical: Sequence[str]) -> base.Estimator:
    # AMF splits on numeric features only; standardising changes nothing for a forest
    return Pick(*numeric) | forest.AMFRegressor(n_estimators=p.n_estimators, step=p.step, seed=p.seed)


def _biased_mf(p: MFParams, numeric: Sequence[str], categorical: Sequence[str]) -> base.Estimator:
    return reco.BiasedMF(n_factors=p.n_factors, bias_optimizer=optim.SGD(p.lr), latent_optimizer=optim.SGD(p.lr),
                         l2_bias=p.l2, l2_latent=p.l2, seed=p.seed)


def _funk_mf(p: MFParams, numeric: Sequence[str], categorical: Sequence[str]) -> base.Estimator:
    return reco.FunkMF(n_factors=p.n_factors, optimizer=optim.SGD(p.lr), l2=p.l2, seed=p.seed)


@dataclass(frozen=True)
class EpsilonGreedyParams:
    epsilon: float = 0.1
    seed: int = 42


@dataclass(frozen=True)
class UCBParams:
    delta: float = 1.0
    seed: int = 42


@dataclass(frozen=True)
class SeedParams:
    seed: int = 42


def _epsilon_greedy(p: EpsilonGreedyParams, numeric: Sequence[str], categorical: Sequence[str]) -> Any:
    return bandit.EpsilonGreedy(epsilon=p.epsilon, seed=p.seed)


def _ucb(p: UCBParams, numeric: Sequence[str], categorical: Sequence[str]) -> Any:
    return bandit.UCB(delta=p.delta, seed=p.seed)


def _thompson(p: SeedParams, numeric: Sequence[str], categorical: Sequence[str]) -> Any:
    return bandit.ThompsonSampling(reward_obj=proba.Beta(), seed=p.seed)   # rewards in [0, 1]


def _random_policy(p: SeedParams, numeric: Sequence[str], categorical: Sequence[str]) -> Any:
    return bandit.RandomPolicy(seed=p.seed)


@dataclass(frozen=True)
class LinUCBParams:
    alpha: float = 1.0        # exploration width (Li et al.'s alpha): bound = mean + alpha * its deviation
    ridge: float = 1.0        # prior precision of each arm's linear model (River's own ``alpha``)
    smoothing: float = 0.0    # in (0, 1): forget old rewards (River's smoothing); 0: keep all
    burn_in: int = 0          # pulls of each arm before the policy chooses
    context: str = ""         # comma-separated numeric inputs to use as context; "": all of them
    seed: int = 42


def _linucb(p: LinUCBParams, numeric: Sequence[str], categorical: Sequence[str]) -> Any:
    """Contextual: the context is the pipeline's numeric inputs (raw and window features).

    Categorical features are left out on purpose: a bandit's logged action is
    one of them, and it is not known when the policy decides.
    """
    from models.bandit import LinUCB

    features = tuple(f.strip() for f in p.context.split(",") if f.strip()) if p.context else tuple(numeric)
    if unknown := [f for f in features if f not in numeric]:
        raise ValueError(f"linucb context: {unknown} are not numeric inputs of the pipeline; known: {list(numeric)}")
    if not (math.isfinite(p.alpha) and p.alpha >= 0 and math.isfinite(p.ridge) and p.ridge > 0
            and 0.0 <= p.smoothing < 1.0 and p.burn_in >= 0):
        raise ValueError("linucb needs alpha >= 0, ridge > 0, 0 <= smoothing < 1 and burn_in >= 0")
    return LinUCB(features, alpha=p.alpha, ridge=p.ridge, smoothing=p.smoothing or None,
                  burn_in=p.burn_in, seed=p.seed)


@dataclass(frozen=True)
class Entry:
    params: type
    build: Callable[[Any, Sequence[str], Sequence[str]], base.Estimator]
    task: str                 # "classification", "regression" or "bandit"
    reco: bool = False        # scores a (user, item) pair: the pipeline's [fields] user and item


REGISTRY: Mapping[str, Entry] = {
    "logistic_regression": Entry(LogisticRegressionParams, _logistic_regression, "classification"),
    "hoeffding_adaptive_tree": Entry(HoeffdingAdaptiveTreeParams, _hat, "classification"),
    "arf": Entry(ARFParams, _arf, "classification"),
    "linear_regression": Entry(LinearRegressionParams, _linear_regression, "regression"),
    "amf_regressor": Entry(AMFRegressorParams, _amf, "regression"),
    "biased_mf": Entry(MFParams, _biased_mf, "regression", reco=True),
    "funk_mf": Entry(MFParams, _funk_mf, "regression", reco=True),
    "epsilon_greedy": Entry(EpsilonGreedyParams, _epsilon_greedy, "bandit"),
    "ucb": Entry(UCBParams, _ucb, "bandit"),
    "thompson": Entry(SeedParams, _thompson, "bandit"),
    "random_policy": Entry(SeedParams, _random_policy, "bandit"),
    "linucb": Entry(LinUCBParams, _linucb, "bandit"),
}


def task_of(kind: str) -> str:
    """The task a model kind serves (batch kinds are classifiers)."""
    return "classification" if kind in BATCH_KINDS else REGISTRY[kind].task if kind in REGISTRY else "?"


#: Kinds of batch (torch) models: ``predict_proba_many`` once per micro-batch.
BATCH_KINDS: tuple[str, ...] = ("wide_deep",)


def check_model(spec: ModelSpec, numeric: Sequence[str] = (), categorical: Sequence[str] = ()) -> None:
    """Raise ``ValueError``/``TypeError`` if ``spec`` names an unknown kind or bad parameters."""
    if spec.kind in BATCH_KINDS:
        from models.deep import DeepParams

        _typed(DeepParams, spec.params)
        return
    build_estimator(spec, numeric, categorical)


def build_estimator(spec: ModelSpec, numeric: Sequence[str] = (), categorical: Sequence[str] = ()) -> base.Estimator:
    """A fresh River estimator for ``spec``; raises on unknown kinds or bad parameters."""
    try:
        entry = REGISTRY[spec.kind]
    except KeyError:
        known = sorted(REGISTRY) + list(BATCH_KINDS)
        raise ValueError(f"unknown model kind {spec.kind!r}; registered: {known}") from None
    return entry.build(_typed(entry.params, spec.params), numeric, categorical)


def build_model(spec: ModelSpec, numeric: Sequence[str] = (), categorical: Sequence[str] = (),
                device: str | None = None, reco_fields: tuple[str, str] | None = None,
                bandit_arms: tuple[str, Sequence[str], float | None] | None = None) -> Any:
    """A fresh model for ``spec``: an :class:`~models.online.OnlineModel` around a River
    estimator, or a :class:`~models.deep.DeepModel` for a batch kind (``device``, when
    given, overrides the spec's ``device`` parameter: the worker's setting wins)."""
    from models.online import OnlineModel

    if spec.kind in BATCH_KINDS:
        import dataclasses

        from models.deep import DeepModel, DeepParams

        params = _typed(DeepParams, spec.params)
        if device is not None and device != "auto":
            params = dataclasses.replace(params, device=device)
        return DeepModel(spec.name, numeric, categorical, params)

    from models.online import OnlineRegressor, RecoModel

    entry = REGISTRY.get(spec.kind)
    if entry is not None and entry.task == "bandit":
        from models.bandit import BanditModel

        if bandit_arms is None:
            raise ValueError(f"model kind {spec.kind!r} needs the pipeline's [bandit] arm and arms")
        field, arms, at_least = bandit_arms
        return BanditModel(spec.name, build_estimator(spec, numeric, categorical), arms, field, at_least)
    if entry is not None and entry.reco:
        if reco_fields is None:
            raise ValueError(f"model kind {spec.kind!r} needs the pipeline's [fields] user and item")
        return RecoModel(spec.name, build_estimator(spec, numeric, categorical), *reco_fields)
    if entry is not None and entry.task == "regression":
        return OnlineRegressor(spec.name, build_estimator(spec, numeric, categorical))
    return OnlineModel(spec.name, build_estimator(spec, numeric, categorical))
