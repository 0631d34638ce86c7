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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


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

    def choose(self, x: Mapping[str, Any]) -> str:
        """Pull an arm for this event (advances the policy's random state, as River's pull does)."""
        return self.policy.pull(self.arms)

    def learn(self, chosen: str, x: Mapping[str, Any], y: float) -> bool:
        """Learn from the reward if ``chosen`` is the logged arm (the replay method); True if it did."""
        if chosen != x.get(self.arm_field):
            return False
        self.policy.update(chosen, self.reward(y))
        self.n_learned += 1
        return True


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
