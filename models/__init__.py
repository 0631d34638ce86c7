"""Pure ML for streamscore: online River learners, their registry and evaluation.

Nothing here imports faust or Kafka: models are plain objects with River's
verbs (``predict_proba_one``/``predict_one``/``learn_one``) so they can be
unit-tested, replayed offline and compared with ``river.evaluate``.

>>> from models import build_model, ModelSpec
>>> m = build_model(ModelSpec(name="lr", kind="logistic_regression"), numeric=["a"])
>>> round(m.predict_proba_one({"a": 1.0}), 3)
0.5
"""

from models.base import Classifier, ModelSpec
from models.evaluate import Prequential, merge as merge_prequential
from models.online import OnlineModel
from models.registry import REGISTRY, build_model

__all__ = ["Classifier", "ModelSpec", "OnlineModel", "Prequential", "REGISTRY", "merge_prequential", "build_model"]
