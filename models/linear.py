"""River's standardised logistic regression, run by a native kernel with the same bits.

Why: ``preprocessing.StandardScaler() | linear_model.LogisticRegression()`` is
the default online classifier of a pipeline, and River spends ~35 µs per
event on it (dict transforms, a pipeline walk, Rust ``VectorDict`` calls):
the largest single cost of the full benchmark pipeline. ``ext.ScaledLogistic``
(C++, with a pure-Python twin) does the same arithmetic in the same order,
so predictions, learning and snapshots give the same numbers as River's
pipeline, bit for bit (``tests/unit/test_linear.py`` checks it against
River itself on random streams), in ~2 µs.

>>> m = ScaledLogisticRegression(lr=0.01)
>>> m.predict_proba_one({"x": 1.0})
{False: 0.5, True: 0.5}
>>> for v, y in [(1.0, True), (-1.0, False), (2.0, True)]:
...     m.learn_one({"x": v}, y)
>>> round(m.predict_proba_one({"x": 1.5})[True], 6)
0.502971
>>> del m     # (nanobind reports native objects still alive at exit as leaks)
"""

from __future__ import annotations

from typing import Any

import ext


class ScaledLogisticRegression:
    """``StandardScaler() | LogisticRegression(optim.SGD(lr), l2=l2, intercept_lr=intercept_lr)``.

    Numeric features only (a pipeline with categorical features keeps River's
    own pipeline, which one-hot encodes them). Pickles as plain data.
    """

    def __init__(self, lr: float = 0.01, l2: float = 0.0, intercept_lr: float = 0.01,
                 clip_gradient: float = 1e12) -> None:
        self._kernel = ext.ScaledLogistic(lr, l2, intercept_lr, clip_gradient)

    def predict_proba_one(self, x: dict[str, float]) -> dict[bool, float]:
        p = self._kernel.predict_proba_one(x)
        return {False: 1.0 - p, True: p}

    def proba_true(self, x: dict[str, float]) -> float:
        """P(y = 1 | x), without building River's dict."""
        return self._kernel.predict_proba_one(x)

    def learn_one(self, x: dict[str, float], y: bool | int) -> None:
        self._kernel.learn_one(x, bool(y))

    @property
    def weights(self) -> dict[str, float]:
        st = self._kernel.state()
        return dict(zip(st["names"], st["weights"]))

    @property
    def intercept(self) -> float:
        return float(self._kernel.state()["intercept"])

    def __getstate__(self) -> dict[str, Any]:
        return self._kernel.state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._kernel = ext.ScaledLogistic.from_state(state)

    def __repr__(self) -> str:
        st = self._kernel.state()
        return (f"ScaledLogisticRegression(lr={st['lr']}, l2={st['l2']}, intercept_lr={st['intercept_lr']}, "
                f"features={len(st['names'])}, n_iterations={st['n_iterations']})")
