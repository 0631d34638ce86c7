"""Prequential (test-then-train) metrics of a binary classifier.

Why River's metrics for accuracy and log loss: they are the reference the
replay tests compare with (``river.evaluate.progressive_val_score``), and they
update in O(1). ROC AUC is :class:`BinnedROCAUC` instead of River's
``ROCAUC``: River's updates ten confusion matrices per label (~10 µs, a third
of a label's cost on the hot path) and still approximates the curve with ten
thresholds; a histogram of scores per class updates in O(1) and gives the
Mann-Whitney AUC with ties inside a bin counted as half.

>>> p = Prequential()
>>> p.update(1, 0.9); p.update(0, 0.2); p.update(1, 0.4)
>>> p.get()["accuracy"]
0.666...
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

from river import drift, metrics, utils
from river.drift import ADWIN


class BinnedROCAUC:
    """ROC AUC of scores in [0, 1] from per-class histograms.

    Exact (the Mann-Whitney statistic) when no two scores of different classes
    share one of the ``bins`` equal-width bins; otherwise such pairs count as
    half, an error of at most their share of all pairs.

    >>> auc = BinnedROCAUC()
    >>> for y, p in [(1, 0.9), (0, 0.1), (1, 0.35), (0, 0.4)]:
    ...     auc.update(y, p)
    >>> auc.get()
    0.75
    """

    def __init__(self, bins: int = 4096) -> None:
        self.bins = bins
        self.pos = [0] * bins
        self.neg = [0] * bins

    def update(self, y: bool | int, p_true: float) -> None:
        i = int(p_true * self.bins)
        i = 0 if i < 0 else (self.bins - 1 if i >= self.bins else i)
        if y:
            self.pos[i] += 1
        else:
            self.neg[i] += 1

    def get(self) -> float:
        n_pos, n_neg = sum(self.pos), sum(self.neg)
        if not n_pos or not n_neg:
            return 0.0          # undefined with one class: River's ROCAUC also reports 0
        area, neg_below = 0.0, 0
        for p, n in zip(self.pos, self.neg):
            if p:
                area += p * (neg_below + 0.5 * n)
            neg_below += n
        return area / (n_pos * n_neg)


class Prequential:
    """Accuracy, log loss and ROC AUC of probabilities scored before learning.

    The figures are River's, bit for bit (``metrics.Accuracy``,
    ``utils.Rolling(metrics.Accuracy)``, ``metrics.LogLoss``; checked in
    tests/unit/test_models.py), computed with the same float operations but
    without River's per-call machinery: three River metrics cost ~2.5 µs per
    label and model, a tenth of the full pipeline. ADWIN is River's.
    """

    def __init__(self, threshold: float = 0.5, window: int = 1000) -> None:
        self.threshold = threshold
        self.window = window
        self.correct = 0                 # metrics.Accuracy: correct / n
        self.recent: deque[bool] = deque()   # utils.Rolling(metrics.Accuracy, window)
        self.recent_correct = 0
        self.drift = drift.ADWIN()     # on the 0/1 error stream: a change in error rate is concept drift
        self.drifts = 0
        self.loss_n = 0.0                # metrics.LogLoss: stats.Mean of the clamped log loss
        self.loss_mean = 0.0
        self.roc_auc = BinnedROCAUC()
        self.n = 0
        #: log loss of the constant predictor "rate of positives so far" (a KT estimate):
        #: the baseline a model has to beat to have learned anything
        self.positives = 0
        self.baseline_loss = 0.0

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Snapshots written before the River metrics were inlined carry those objects: convert them."""
        if "accuracy" in state:
            acc, rolling, ll = state.pop("accuracy"), state.pop("rolling_accuracy"), state.pop("log_loss")
            state["correct"] = round(acc.cm.total_true_positives)
            state["window"] = rolling.window_size
            state["recent"] = deque(args[0] == args[1] for args, _ in rolling.window)   # ((y, pred), kwargs)
            state["recent_correct"] = sum(state["recent"])
            state["loss_n"], state["loss_mean"] = ll._mean.n, ll._mean._mean
        self.__dict__.update(state)

    def update(self, y: bool | int, p_true: float) -> None:
        self.update_many((y,), (p_true,))

    def update_many(self, ys: Iterable[bool | int], ps: Iterable[float]) -> None:
        """``update`` on each pair, in order, with the same float operations.

        Why: a worker evaluates a micro-batch's labels together, after the
        batch (metrics change no score); one loop over local variables costs
        half of one call per label.
        """
        threshold, window, recent, log = self.threshold, self.window, self.recent, math.log
        drift = self.drift
        update_drift = drift.update
        # River's ADWIN.update is "reset after a detection, then the Cython helper's update", behind
        # two Python calls and a property read per label: done here directly (~1.5 % of the full
        # benchmark worker). Only for the ADWIN this was checked against (tests/unit/test_models.py);
        # any other detector, or a River whose ADWIN lacks these attributes, takes the public path.
        helper = getattr(drift, "_helper", None) if type(drift) is ADWIN else None
        detected = bool(getattr(drift, "_drift_detected", False))
        auc = self.roc_auc
        bins, pos, neg = auc.bins, auc.pos, auc.neg
        top = bins - 1
        correct, recent_correct, drifts = self.correct, self.recent_correct, self.drifts
        loss_n, loss_mean, baseline_loss = self.loss_n, self.loss_mean, self.baseline_loss
        positives, n = self.positives, self.n
        lo_p, hi_p = 1e-15, 1 - 1e-15
        for y, p_true in zip(ys, ps):
            y = bool(y)
            right = (p_true > threshold) == y          # a tie is class 0, as River's argmax
            correct += right
            if len(recent) == window:
                recent_correct -= recent.popleft()
            recent.append(right)
            recent_correct += right
            if helper is not None:
                if detected:
                    drift._reset()
                    helper = drift._helper
                detected = helper.update(0.0 if right else 1.0)
                if detected:
                    drifts += 1
            else:
                update_drift(0.0 if right else 1.0)
                if drift.drift_detected:
                    drifts += 1
            p = hi_p if p_true > hi_p else (lo_p if p_true < lo_p else p_true)   # LogLoss._clamp_proba
            loss_n += 1.0                               # stats.Mean.update, w = 1
            i = int(p_true * bins)                      # BinnedROCAUC.update, inlined
            i = 0 if i < 0 else (top if i > top else i)
            base = (positives + 0.5) / (n + 1.0)
            if y:
                loss_mean += (1.0 / loss_n) * (-log(p) - loss_mean)
                pos[i] += 1
                baseline_loss += -log(base)
                positives += 1
            else:
                loss_mean += (1.0 / loss_n) * (-log(1 - p) - loss_mean)
                neg[i] += 1
                baseline_loss += -log(1.0 - base)
            n += 1
        if helper is not None:
            drift._drift_detected = detected
        self.correct, self.recent_correct, self.drifts = correct, recent_correct, drifts
        self.loss_n, self.loss_mean, self.baseline_loss = loss_n, loss_mean, baseline_loss
        self.positives, self.n = positives, n

    def get(self) -> dict[str, float]:
        return {
            "n": self.n,
            "accuracy": self.correct / self.n if self.n else 0.0,
            "log_loss": self.loss_mean,
            "roc_auc": float(self.roc_auc.get()),
            "baseline_log_loss": self.baseline_loss / self.n if self.n else 0.0,
        }

    def state(self) -> dict[str, object]:
        """Plain data from which several partitions' figures merge exactly (see :func:`merge`)."""
        return {
            **self.get(),
            "rolling_accuracy": self.recent_correct / len(self.recent) if self.recent else 0.0,
            "drifts": self.drifts,
            "auc_pos": {str(i): c for i, c in enumerate(self.roc_auc.pos) if c},   # JSON: string keys
            "auc_neg": {str(i): c for i, c in enumerate(self.roc_auc.neg) if c},
        }


def merge(states: list[dict]) -> dict[str, float]:
    """Merge :meth:`Prequential.state` of several partitions into global figures.

    Accuracy and log loss are means weighted by ``n``; ROC AUC is read from
    the summed histograms, so it is the AUC over all partitions' labels.

    >>> a, b = Prequential(), Prequential()
    >>> a.update(1, 0.9); b.update(0, 0.2); b.update(1, 0.1)
    >>> m = merge([a.state(), b.state()])
    >>> m["n"], round(m["accuracy"], 3), m["roc_auc"]
    (3, 0.667, 0.5)
    """
    if any("matched" in s for s in states):      # bandit policies
        from models.bandit import merge_bandit

        return merge_bandit(states)
    n = sum(int(s["n"]) for s in states)
    if any("mae" in s for s in states):          # regression: n-weighted MAE, pooled squares
        if not n:
            return {"n": 0, "mae": 0.0, "rmse": 0.0, "baseline_mae": 0.0, "baseline_rmse": 0.0}
        relevant = sum(int(s.get("relevant", 0)) for s in states)
        hit = {"hit_rate": sum(int(s.get("hits", 0)) for s in states) / relevant} if relevant else {}
        return {
            **hit,
            "n": n,
            "mae": sum(float(s["mae"]) * int(s["n"]) for s in states) / n,
            "rmse": math.sqrt(sum(float(s.get("sq_sum", 0.0)) for s in states) / n),
            "baseline_mae": sum(float(s["baseline_mae"]) * int(s["n"]) for s in states) / n,
            "baseline_rmse": math.sqrt(sum(float(s.get("base_sq", 0.0)) for s in states) / n),
        }
    auc = BinnedROCAUC()
    for s in states:
        for key, hist in (("auc_pos", auc.pos), ("auc_neg", auc.neg)):
            for i, c in dict(s.get(key, {})).items():  # type: ignore[arg-type]
                hist[int(i)] += int(c)
    if not n:
        return {"n": 0, "accuracy": 0.0, "log_loss": 0.0, "roc_auc": 0.0, "baseline_log_loss": 0.0}
    return {
        "n": n,
        "accuracy": sum(float(s["accuracy"]) * int(s["n"]) for s in states) / n,
        "log_loss": sum(float(s["log_loss"]) * int(s["n"]) for s in states) / n,
        "roc_auc": auc.get(),
        "baseline_log_loss": sum(float(s.get("baseline_log_loss", 0.0)) * int(s["n"]) for s in states) / n,
    }


class RegressionPrequential:
    """MAE, RMSE and R² of predictions made before learning, with a constant baseline.

    The baseline predicts the mean of the labels seen so far (0 before the
    first), scored the same way: the figure a model has to beat. ADWIN watches
    the absolute error for drift, as the classifier's does on the 0/1 error.

    >>> p = RegressionPrequential()
    >>> for y, yhat in [(1.0, 0.0), (3.0, 2.0), (2.0, 2.5)]:
    ...     p.update(y, yhat)
    >>> g = p.get(); g["n"], round(g["mae"], 4), round(g["baseline_mae"], 4)
    (3, 0.8333, 1.0)
    """

    def __init__(self, threshold: float = 0.5, window: int = 1000) -> None:
        self.mae = metrics.MAE()
        self.rmse = metrics.RMSE()
        self.r2 = metrics.R2()
        self.rolling_mae = utils.Rolling(metrics.MAE, window_size=window)
        self.drift = drift.ADWIN()
        self.drifts = 0
        self.n = 0
        self.hits = 0              # recommendation: relevant items ranked in the top k at prediction time
        self.relevant = 0
        self.y_sum = 0.0
        self.baseline_abs = 0.0
        self.baseline_sq = 0.0

    def update(self, y: float, y_pred: float) -> None:
        y, y_pred = float(y), float(y_pred)
        self.mae.update(y, y_pred)
        self.rmse.update(y, y_pred)
        self.r2.update(y, y_pred)
        self.rolling_mae.update(y, y_pred)
        self.drift.update(abs(y - y_pred))
        if self.drift.drift_detected:
            self.drifts += 1
        base = self.y_sum / self.n if self.n else 0.0
        self.baseline_abs += abs(y - base)
        self.baseline_sq += (y - base) ** 2
        self.y_sum += y
        self.n += 1

    def update_many(self, ys: Iterable[float], ps: Iterable[float]) -> None:
        """``update`` on each pair, in order."""
        for y, y_pred in zip(ys, ps):
            self.update(y, y_pred)

    def update_hit(self, hit: bool) -> None:
        """One relevant item (label at least the pipeline's ``relevant_at_least``): in the top k or not."""
        self.relevant += 1
        self.hits += bool(hit)

    def get(self) -> dict[str, float]:
        n = self.n or 1
        hit = {"hit_rate": self.hits / self.relevant} if getattr(self, "relevant", 0) else {}
        return {
            **hit,
            "n": self.n,
            "mae": float(self.mae.get()),
            "rmse": float(self.rmse.get()),
            "r2": float(self.r2.get()) if self.n > 1 else 0.0,
            "baseline_mae": self.baseline_abs / n,
            "baseline_rmse": math.sqrt(self.baseline_sq / n),
        }

    def state(self) -> dict[str, object]:
        """Plain data from which several partitions' figures merge (see :func:`merge`)."""
        return {**self.get(), "rolling_mae": float(self.rolling_mae.get()), "drifts": self.drifts,
                "sq_sum": float(self.rmse.get()) ** 2 * self.n, "base_sq": self.baseline_sq,
                "hits": getattr(self, "hits", 0), "relevant": getattr(self, "relevant", 0)}


def prequential_for(task: str, threshold: float = 0.5) -> Any:
    """The prequential metrics of a pipeline task."""
    if task == "bandit":
        from models.bandit import BanditPrequential

        return BanditPrequential()
    return RegressionPrequential() if task == "regression" else Prequential(threshold)
