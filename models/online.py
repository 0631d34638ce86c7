"""An online River classifier with a version that counts what it has learned.

Why a wrapper: a published prediction names the model version that made it, and
a redelivered event must get the same answer; counting learn steps gives a
version that is deterministic under replay.

>>> from river import linear_model
>>> m = OnlineModel("lr", linear_model.LogisticRegression())
>>> m.predict_proba_one({"x": 1.0}), m.version
(0.5, 'lr@0')
>>> m.learn_one({"x": 1.0}, 1); m.version
'lr@1'
"""

from __future__ import annotations

from typing import Any

from models.base import Features


class OnlineModel:
    """A named River classifier: ``predict_proba_one`` then, later, ``learn_one``."""

    __slots__ = ("name", "estimator", "n_learned")

    def __init__(self, name: str, estimator: Any, n_learned: int = 0) -> None:
        self.name = name
        self.estimator = estimator
        self.n_learned = n_learned

    @property
    def version(self) -> str:
        return f"{self.name}@{self.n_learned}"

    def predict_proba_one(self, x: Features) -> float:
        return float(self.estimator.predict_proba_one(dict(x)).get(True, 0.0))

    def learn_one(self, x: Features, y: bool | int) -> None:
        self.estimator.learn_one(dict(x), bool(y))
        self.n_learned += 1
