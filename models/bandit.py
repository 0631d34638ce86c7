"""Bandit policies that choose an action per event and learn from its reward later.

Why River's policies with the replay method: a recorded stream holds the
action that was actually taken (the *logged* arm) and its reward; a new policy
can only be judged on the events where it would have taken the same action
(Li et al., 2011, "Unbiased offline evaluation of contextual-bandit-based news
article recommendation"). That is what ``river.bandit.evaluate_offline`` does,
and what the worker does live: the policy pulls an arm when the event arrives
(the published decision), and when the reward arrives (the label, possibly
much later) it learns only if its arm was the logged one. Replayed with each
reward right after its event, the worker reproduces ``evaluate_offline``
exactly (tests/unit/test_bandit.py).

>>> from river import bandit
>>> m = BanditModel("eg", bandit.EpsilonGreedy(0.1, seed=1), ["a", "b"], "arm")
>>> chosen = m.choose({"arm": "a"}); chosen in ("a", "b"), m.version
(True, 'eg@0')
>>> m.learn(chosen, {"arm": chosen}, 1.0), m.version
(True, 'eg@1')

Contextual policies (River's ``ContextualPolicy``, e.g. :class:`LinUCB`) get
the event's features as context, both when they choose and when they learn;
context-free ones are called exactly as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from river import bandit


class BanditModel:
    """A named River bandit policy over fixed ``arms``; the logged arm is field ``arm_field``."""

    __slots__ = ("name", "policy", "arms", "arm_field", "reward_at_least", "n_learned")

    def __init__(self, name: str, policy: Any, arms: Sequence[str], arm_field: str,
                 reward_at_least: float | None = None, n_learned: int = 0) -> None:
        self.name = name
        self.policy = policy
        self.arms = list(arms)
        self.arm_field = arm_field
        self.reward_at_least = reward_at_least
        self.n_learned = n_learned

    @property
    def version(self) -> str:
        return f"{self.name}@{self.n_learned}"

    def reward(self, y: float) -> float:
        """The reward of a label: the label, or 1/0 against ``reward_at_least``."""
        if self.reward_at_least is None:
            return float(y)
        return 1.0 if float(y) >= self.reward_at_least else 0.0

    @property
    def contextual(self) -> bool:
        """True for a policy that reads a context (River's ``ContextualPolicy``, e.g. :class:`LinUCB`).

        A property, not a slot: a restored snapshot replaces ``policy``.
        """
        return isinstance(self.policy, bandit.base.ContextualPolicy)

    def choose(self, x: Mapping[str, Any]) -> str:
        """Pull an arm for this event (advances the policy's random state, as River's pull does).

        A contextual policy pulls with the event's context: :meth:`LinUCB.observe`
        first counts the event in the feature statistics (no label needed), so
        each decision sees the statistics up to and including its own event.
        """
        if self.contextual:
            return self.policy.pull(self.arms, context=self.policy.observe(x))
        return self.policy.pull(self.arms)

    def learn(self, chosen: str, x: Mapping[str, Any], y: float) -> bool:
        """Learn from the reward if ``chosen`` is the logged arm (the replay method); True if it did."""
        if chosen != x.get(self.arm_field):
            return False
        if self.contextual:
            self.policy.update(chosen, self.policy.context(x), self.reward(y))
        else:
            self.policy.update(chosen, self.reward(y))
        self.n_learned += 1
        return True


class LinUCB(bandit.LinUCBDisjoint):
    """Disjoint LinUCB (Li et al., 2010) over named numeric features, standardised online.

    Why a subclass of River's ``LinUCBDisjoint``: River's policy ranks arms by
    ``mu + sigma`` of each arm's Bayesian linear regression, where ``sigma``
    is the *predictive* deviation (observation noise included) and its
    ``alpha`` is the prior precision; there is no exploration width. Here
    ``alpha`` is Li et al.'s width: an arm's bound is ``mu + alpha * s``,
    with ``s = sqrt(x' A^-1 x)`` the deviation of the mean estimate alone
    and ``A = ridge * I + sum x x'`` (River's regression with ``alpha=ridge``,
    ``beta=1``), so ``alpha=0`` is greedy. Each arm keeps River's regression,
    learnt only from the events where it was the logged arm (replay).

    The context is built here, not by the caller, so that a pipeline names
    its features once: ``features`` (the pipeline's numeric inputs: raw
    fields and window features), each standardised by running mean and
    variance (Welford; pure Python, so a replay gives the same bits), plus a
    constant 1 (the regression has no intercept of its own). A missing
    feature counts as its mean (0 after standardising). Never put the logged
    action, or a property of the logged item, in ``features``: the replay
    method needs a context known *before* the decision, and a context that
    reveals the logged arm lets the policy pick which events it is judged on.

    ``smoothing`` in (0, 1) forgets old rewards (River's exponential
    smoothing of the posterior, for drifting tastes); ``None`` keeps them all.

    Arm ``"b"`` pays when ``u > 0``, arm ``"a"`` otherwise:

    >>> import random
    >>> rng, p, won = random.Random(0), LinUCB(["u"], alpha=0.5, seed=1), 0
    >>> for t in range(600):
    ...     x = {"u": rng.uniform(-1, 1)}
    ...     arm = p.pull(["a", "b"], context=p.observe(x))
    ...     reward = float((arm == "b") == (x["u"] > 0))
    ...     p.update(arm, p.context(x), reward)
    ...     won += reward if t >= 300 else 0
    >>> won / 300 > 0.9
    True
    >>> p.pull(["a", "b"], context=p.context({"u": 0.8})), p.pull(["a", "b"], context=p.context({"u": -0.8}))
    ('b', 'a')
    """

    BIAS = "__bias__"

    def __init__(self, features: Sequence[str], alpha: float = 1.0, ridge: float = 1.0,
                 smoothing: float | None = None, burn_in: int = 0, seed: int | None = None) -> None:
        super().__init__(alpha=ridge, beta=1.0, smoothing=smoothing, seed=seed)
        # River 0.26's LinUCBDisjoint hands burn_in to the base class as its reward_scaler
        # (positional mix-up): set both here
        self.reward_scaler = None
        self.burn_in = burn_in
        self.features = tuple(features)
        self.alpha = alpha          # exploration width (River's own alpha is bound to ``ridge`` above)
        self.ridge = ridge
        self._moments: dict[str, list[float]] = {f: [0.0, 0.0, 0.0] for f in self.features}  # n, mean, M2

    def observe(self, x: Mapping[str, Any]) -> dict[str, float]:
        """Count ``x`` in the running feature statistics, then return its :meth:`context`."""
        for f in self.features:
            v = x.get(f)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                mo = self._moments[f]
                mo[0] += 1.0
                delta = v - mo[1]
                mo[1] += delta / mo[0]
                mo[2] += delta * (v - mo[1])
        return self.context(x)

    def context(self, x: Mapping[str, Any]) -> dict[str, float]:
        """The standardised context of ``x`` under the current statistics (1 for the intercept)."""
        ctx = {self.BIAS: 1.0}
        for f in self.features:
            v = x.get(f)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                n, mean, m2 = self._moments[f]
                sd = math.sqrt(m2 / n) if n > 1 else 0.0
                ctx[f] = (v - mean) / sd if sd > 0 else 0.0
        return ctx

    def _pull(self, arm_ids, context):
        bounds = {}
        for arm_id in arm_ids:
            reg = self._bayes_lin_regs[arm_id]
            dist = reg.predict_one(context, with_dist=True)
            # predictive variance = 1/beta (noise) + x' A^-1 x: keep the estimate's part only
            s = math.sqrt(max(dist.sigma ** 2 - 1.0 / reg.beta, 0.0))
            bounds[arm_id] = dist.mu + self.alpha * s
        top = max(bounds.values())
        candidates = [a for a, b in bounds.items() if b == top]
        return self._rng.choice(candidates) if len(candidates) > 1 else candidates[0]


class BanditPrequential:
    """Reward of a policy under the replay method, with regret against the best arm in hindsight.

    ``n`` events were decided; on ``matched`` of them the policy chose the
    logged arm, and those rewards count. Regret compares the reward collected
    with what always playing the best logged arm (by its mean reward over all
    events so far) would have collected on the same number of matches.

    >>> p = BanditPrequential()
    >>> p.update(1.0, "a", "a"); p.update(0.0, "b", "a"); p.update(0.0, "b", "b")
    >>> g = p.get(); g["matched"], g["mean_reward"], round(g["regret"], 3)
    (2, 0.5, 0.0)
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.n = 0
        self.matched = 0
        self.reward_sum = 0.0
        self.arm_n: dict[str, int] = {}
        self.arm_reward: dict[str, float] = {}
        self.drifts = 0

    def update(self, reward: float, chosen: str, logged: str) -> None:
        self.n += 1
        self.arm_n[logged] = self.arm_n.get(logged, 0) + 1
        self.arm_reward[logged] = self.arm_reward.get(logged, 0.0) + reward
        if chosen == logged:
            self.matched += 1
            self.reward_sum += reward

    def get(self) -> dict[str, float]:
        best = max((self.arm_reward[a] / self.arm_n[a] for a in self.arm_n), default=0.0)
        return {
            "n": self.n,
            "matched": self.matched,
            "reward": self.reward_sum,
            "mean_reward": self.reward_sum / self.matched if self.matched else 0.0,
            "regret": max(0.0, best * self.matched - self.reward_sum),
        }

    def state(self) -> dict[str, object]:
        return {**self.get(), "drifts": self.drifts, "arm_n": dict(self.arm_n), "arm_reward": dict(self.arm_reward)}


def merge_bandit(states: list[dict]) -> dict[str, float]:
    """Merge several partitions' :meth:`BanditPrequential.state` (each partition has its own policy)."""
    total = BanditPrequential()
    for s in states:
        total.n += int(s["n"])
        total.matched += int(s["matched"])
        total.reward_sum += float(s["reward"])
        for a, c in dict(s.get("arm_n", {})).items():
            total.arm_n[a] = total.arm_n.get(a, 0) + int(c)
            total.arm_reward[a] = total.arm_reward.get(a, 0.0) + float(s["arm_reward"][a])
    return total.get()
