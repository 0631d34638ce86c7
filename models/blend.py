"""Blend the champion-side models' scores into the one published score.

Why several policies:

* ``weighted`` (the default): a fixed weighted mean of the scores. Robust: it
  has nothing to learn, so it cannot drift or be fooled by a burst of odd
  labels, and averaging models with uncorrelated errors already helps.
* ``max``: the most alarmed model wins. For screening, when missing a positive
  costs far more than a false alarm; it is not calibrated.
* ``stacked``: an online logistic regression over the models' log-odds learns,
  on this stream, which model to trust and how much (a model whose score is
  noise gets a weight near 0; an over-confident one is scaled down). It learns
  from the scores the models gave *before* seeing each label (test-then-train),
  which are honest out-of-sample scores; stacking on in-sample scores would
  reward the model that memorises best. With no labels yet it says 0.5.

Every policy reads the scores of the models it was built with (``models``,
the non-shadow ones), by name. A :class:`Blend` pickles (it is snapshotted
with the models), and its version counts the labels it has learned, so a
replay from the same state gives the same scores.

>>> b = Blend(BlendSpec(policy="weighted", weights={"lr": 3.0}), models=["lr", "hat"])
>>> b.score({"lr": 0.75, "hat": 0.25})
0.625
>>> s = Blend(BlendSpec(policy="stacked"), models=["lr", "hat"])
>>> s.score({"lr": 0.8, "hat": 0.4}), s.version
(0.5, 'blend@0')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from river import linear_model, optim

POLICIES = ("weighted", "max", "stacked")

_KEYS = ("policy", "weights", "lr")
_EPS = 1e-6


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class BlendSpec:
    """The ``[blend]`` table of a pipeline spec, validated on construction.

    >>> BlendSpec.parse({"policy": "stacked", "lr": 0.1}).lr
    0.1
    >>> BlendSpec.parse({"policy": "max", "lr": 0.1})
    Traceback (most recent call last):
    ...
    ValueError: [blend] lr only applies to policy 'stacked', not 'max'
    """

    policy: str = "weighted"
    weights: Mapping[str, float] = field(default_factory=dict)   # weighted: per model; a missing name weighs 1.0
    lr: float = 0.05                                             # stacked: SGD learning rate

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"[blend] unknown policy {self.policy!r}; known: {list(POLICIES)}")
        if not isinstance(self.weights, Mapping):
            raise TypeError(f"[blend] weights must be a table of model name = weight, got {self.weights!r}")
        if self.weights and self.policy != "weighted":
            raise ValueError(f"[blend] weights only apply to policy 'weighted', not {self.policy!r}")
        for name, w in self.weights.items():
            if not isinstance(name, str) or not _number(w):
                raise TypeError(f"[blend] weight {name!r} must be a number, got {w!r}")
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"[blend] weight {name!r} must be finite and >= 0, got {w!r}")
        if not _number(self.lr):
            raise TypeError(f"[blend] lr must be a number, got {self.lr!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"[blend] lr must be > 0, got {self.lr!r}")
        object.__setattr__(self, "weights", MappingProxyType({k: float(w) for k, w in self.weights.items()}))
        object.__setattr__(self, "lr", float(self.lr))

    def __reduce__(self) -> tuple[Any, ...]:    # MappingProxyType does not pickle
        return (BlendSpec, (self.policy, dict(self.weights), self.lr))

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> BlendSpec:
        """The spec from its TOML table; ``ValueError`` on unknown keys or a parameter of another policy."""
        if not isinstance(doc, Mapping):
            raise TypeError(f"[blend] must be a table, got {doc!r}")
        if unknown := set(doc) - set(_KEYS):
            raise ValueError(f"[blend] unknown key(s) {sorted(unknown)}; known: {list(_KEYS)}")
        policy = doc.get("policy", "weighted")
        if "lr" in doc and policy != "stacked":
            raise ValueError(f"[blend] lr only applies to policy 'stacked', not {policy!r}")
        return cls(**dict(doc))


def _logit(s: float) -> float:
    """Log-odds of ``s`` clipped to [1e-6, 1 - 1e-6]; a NaN score is no evidence (0)."""
    if math.isnan(s):
        return 0.0
    s = min(max(s, _EPS), 1.0 - _EPS)
    return math.log(s / (1.0 - s))


class Blend:
    """The published score from the models' scores under a :class:`BlendSpec`."""

    def __init__(self, spec: BlendSpec, models: Sequence[str]) -> None:
        models = tuple(models)
        if not models:
            raise ValueError("a blend needs at least one model")
        if len(set(models)) != len(models):
            raise ValueError(f"model names must be unique: {list(models)}")
        if unknown := set(spec.weights) - set(models):
            raise ValueError(f"[blend] weights name unknown model(s) {sorted(unknown)}; models: {list(models)}")
        self.spec = spec
        self.models = models
        self.n_learned = 0
        self.estimator: linear_model.LogisticRegression | None = None
        self._weights: tuple[tuple[str, float], ...] = ()
        self._total = 0.0
        if spec.policy == "weighted":
            self._weights = tuple((m, w) for m in models if (w := spec.weights.get(m, 1.0)) > 0)
            self._total = sum(w for _, w in self._weights)
            if not self._weights:
                raise ValueError("[blend] weights are all 0: nothing would be published")
        elif spec.policy == "stacked":
            self.estimator = linear_model.LogisticRegression(optimizer=optim.SGD(spec.lr), intercept_lr=spec.lr)

    @property
    def version(self) -> str:
        return f"blend@{self.n_learned}"

    def _features(self, scores: Mapping[str, float]) -> dict[str, float]:
        return {m: _logit(scores[m]) for m in self.models}

    def score(self, scores: Mapping[str, float]) -> float:
        """The blended score; ``scores`` maps each model name to its P(y = 1)."""
        policy = self.spec.policy
        if policy == "weighted":
            return sum(w * scores[m] for m, w in self._weights) / self._total
        if policy == "max":
            return max(scores[m] for m in self.models)
        assert self.estimator is not None
        return float(self.estimator.predict_proba_one(self._features(scores)).get(True, 0.0))

    def learn_one(self, scores: Mapping[str, float], y: bool | int) -> None:
        """Learn from the scores given before label ``y`` was known; only ``stacked`` learns."""
        if self.estimator is None:
            return
        self.estimator.learn_one(self._features(scores), bool(y))
        self.n_learned += 1
