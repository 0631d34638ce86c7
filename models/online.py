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
from models.linear import ScaledLogisticRegression


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
        est = self.estimator
        if type(est) is ScaledLogisticRegression:     # native; reads x without copying or mutating it
            return est.proba_true(x)  # type: ignore[arg-type]
        return float(est.predict_proba_one(dict(x)).get(True, 0.0))

    #: the published score: P(y=1) for a classifier
    score_one = predict_proba_one

    def learn_one(self, x: Features, y: bool | int) -> None:
        est = self.estimator
        est.learn_one(x if type(est) is ScaledLogisticRegression else dict(x), bool(y))
        self.n_learned += 1


class OnlineRegressor(OnlineModel):
    """A named River regressor: the score is the predicted value.

    >>> from river import linear_model
    >>> m = OnlineRegressor("lin", linear_model.LinearRegression())
    >>> m.learn_one({"x": 1.0}, 2.0); m.version, m.score_one({"x": 1.0}) > 0
    ('lin@1', True)
    """

    __slots__ = ()

    def score_one(self, x: Features) -> float:  # type: ignore[override]
        y = self.estimator.predict_one(dict(x))
        return 0.0 if y is None else float(y)      # some regressors (AMF) answer None before learning

    def learn_one(self, x: Features, y: bool | int | float) -> None:
        self.estimator.learn_one(dict(x), float(y))
        self.n_learned += 1


class RecoModel(OnlineModel):
    """A River recommender (``reco.BiasedMF``, ``reco.FunkMF``): scores a (user, item) pair.

    Why a wrapper: River's recommenders take ``(user, item, y)`` rather than a
    feature dict; the pipeline names which fields are the user and the item.
    Note: River draws the latent factors of a user or item the first time it
    sees one, predicting included; the worker predicts and learns in offset
    order and answers redelivered events from state, so replays stay
    deterministic.

    >>> from river import reco
    >>> m = RecoModel("mf", reco.BiasedMF(seed=1), "u", "i")
    >>> m.learn_one({"u": "a", "i": "b"}, 4.0); m.version, round(m.score_one({"u": "a", "i": "b"}), 2) > 0
    ('mf@1', True)
    """

    __slots__ = ("user", "item")

    def __init__(self, name: str, estimator: Any, user: str, item: str, n_learned: int = 0) -> None:
        super().__init__(name, estimator, n_learned)
        self.user = user
        self.item = item

    def score_one(self, x: Features) -> float:  # type: ignore[override]
        return float(self.estimator.predict_one(x.get(self.user), x.get(self.item)))

    def learn_one(self, x: Features, y: bool | int | float) -> None:
        self.estimator.learn_one(x.get(self.user), x.get(self.item), float(y))
        self.n_learned += 1
