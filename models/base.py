"""The contracts every streamscore model meets.

Why protocols and not a base class: River estimators already have the verbs we
need; a ``Protocol`` lets a River pipeline, a torch scorer or a rule set be a
model without inheriting from anything of ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Features = Mapping[str, float | str]


@runtime_checkable
class Classifier(Protocol):
    """A binary classifier that learns one labelled example at a time."""

    def predict_proba_one(self, x: Features) -> float:
        """P(y = 1 | x); must not mutate ``x`` nor learn."""

    def learn_one(self, x: Features, y: bool | int) -> None:
        """Update the model with one labelled example."""


@dataclass(frozen=True)
class ModelSpec:
    """A named model in a pipeline spec: ``kind`` picks a registry entry.

    >>> ModelSpec(name="lr", kind="logistic_regression", params={"lr": 0.05}).params["lr"]
    0.05
    """

    name: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    shadow: bool = False    # a challenger: scored and evaluated, never part of the published decision
    #: False: a frozen model. It scores every event and is evaluated on every label, but the
    #: stream's labels never train it; its weights change only when a trained checkpoint is
    #: deployed (hot swap). The usual way to serve a deep model trained offline
    #: (``streamscore train``), and it spares the worker the training steps.
    learn: bool = True
