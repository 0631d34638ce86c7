"""Prequential (test-then-train) metrics of a binary classifier.

Why River's metrics: they are the reference the replay tests compare with
(``river.evaluate.progressive_val_score``), and they update in O(1).

>>> p = Prequential()
>>> p.update(1, 0.9); p.update(0, 0.2); p.update(1, 0.4)
>>> p.get()["accuracy"]
0.666...
"""

from __future__ import annotations

from river import metrics


class Prequential:
    """Accuracy, log loss and ROC AUC of probabilities scored before learning."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.accuracy = metrics.Accuracy()
        self.log_loss = metrics.LogLoss()
        self.roc_auc = metrics.ROCAUC()
        self.n = 0

    def update(self, y: bool | int, p_true: float) -> None:
        y = bool(y)
        self.accuracy.update(y, p_true > self.threshold)  # a tie is class 0, as River's argmax
        self.log_loss.update(y, {True: p_true, False: 1.0 - p_true})
        self.roc_auc.update(y, {True: p_true, False: 1.0 - p_true})
        self.n += 1

    def get(self) -> dict[str, float]:
        return {
            "n": self.n,
            "accuracy": float(self.accuracy.get()),
            "log_loss": float(self.log_loss.get()),
            "roc_auc": float(self.roc_auc.get()),
        }
