"""Named River estimators with typed parameters, selectable from a pipeline spec.

Why a registry: a pipeline file names a model and its parameters; nothing in a
spec is ever evaluated as code. Each entry checks its parameters' names and
types and builds a fresh estimator.

Batch models (torch) are listed in :data:`BATCH_KINDS`: they score a whole
micro-batch in one call and are built from :mod:`models.deep`, imported only
when a pipeline uses one (torch takes seconds to import).

>>> sorted(REGISTRY)
['arf', 'hoeffding_adaptive_tree', 'logistic_regression']
>>> BATCH_KINDS
('wide_deep',)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from river import base, compose, forest, linear_model, optim, preprocessing, tree

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


def _preprocess(numeric: Sequence[str], categorical: Sequence[str]) -> base.Transformer:
    """Standardise numeric features; one-hot categorical ones (scaling them would zero them)."""
    scaled = preprocessing.StandardScaler()
    if not categorical:
        return scaled
    return (compose.Select(*numeric) | scaled) + (compose.Select(*categorical) | preprocessing.OneHotEncoder())


def _logistic_regression(p: LogisticRegressionParams, numeric: Sequence[str], categorical: Sequence[str]) -> base.Estimator:
    return _preprocess(numeric, categorical) | linear_model.LogisticRegression(
        optimizer=optim.SGD(p.lr), l2=p.l2, intercept_lr=p.intercept_lr)


def _hat(p: HoeffdingAdaptiveTreeParams, numeric: Sequence[str], categorical: Sequence[str]) -> base.Estimator:
    return tree.HoeffdingAdaptiveTreeClassifier(grace_period=p.grace_period, delta=p.delta, seed=p.seed)


def _arf(p: ARFParams, numeric: Sequence[str], categorical: Sequence[str]) -> base.Estimator:
    return forest.ARFClassifier(n_models=p.n_models, seed=p.seed)


@dataclass(frozen=True)
class Entry:
    params: type
    build: Callable[[Any, Sequence[str], Sequence[str]], base.Estimator]
    task: str


REGISTRY: Mapping[str, Entry] = {
    "logistic_regression": Entry(LogisticRegressionParams, _logistic_regression, "classification"),
    "hoeffding_adaptive_tree": Entry(HoeffdingAdaptiveTreeParams, _hat, "classification"),
    "arf": Entry(ARFParams, _arf, "classification"),
}


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
                device: str | None = None) -> Any:
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

    return OnlineModel(spec.name, build_estimator(spec, numeric, categorical))
